"""Repros that fail (issue 12, point 6): every Python reproduction the suite prints under a FAIL of a mutant
really raises when run on its own, and the causality counterexample always changes the input."""
import numpy as np
import pytest

from infini_attention.conformance.contract import load_impl
from infini_attention.conformance.mutants import MUTANTS
from infini_attention.conformance.properties import PROPERTIES, Settings
from infini_attention.conformance.runner import FAIL, run_property
from infini_attention.conformance.selftest import catch

SETTINGS = Settings(dtype="float32", max_examples=4, seed=0, shrink=False, min_examples=1)


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_every_printed_repro_of_a_mutant_raises(mutant):
    row = catch(mutant, SETTINGS, full=True)
    failed = [r for r in row.results if r.verdict == FAIL]
    assert MUTANTS[mutant][1] in row.caught_by or row.dtype != "float32", row.caught_by
    assert failed, f"{mutant}: nothing failed at {row.dtype}"
    for r in failed:
        assert r.repro, f"{mutant}/{r.name}: no repro printed"
        with pytest.raises(AssertionError):  # Failure and assert both are AssertionErrors
            exec(compile(r.repro, f"<repro of {mutant}/{r.name}>", "exec"), {})  # noqa: S102


def test_causality_counterexample_changes_the_input(capsys):
    r = run_property(PROPERTIES["causality"], load_impl("infini_attention.conformance.mutants:causal_off_by_one"),
                     Settings(dtype="float32", max_examples=20, shrink=True))
    assert r.verdict == FAIL
    ns = {}
    setup = r.repro.split("\ns = Session(")[0]
    exec(setup, ns)  # noqa: S102 - up to the comparison: the printed example itself
    t0 = int(r.example["draws"]["t0"])
    assert ns["x"].shape == ns["x2"].shape and not np.array_equal(ns["x2"][:, t0:], ns["x"][:, t0:])
    assert np.array_equal(ns["x2"][:, :t0], ns["x"][:, :t0])
    assert r.example["x_seed"] == 0 and "x_from_seed(config, B, T, 1)" in r.repro  # shrunk, yet another seed

"""The suite is sharp: every deliberately broken implementation is rejected by the property that names
its mistake, and the same engine without a mistake passes everything (conformance/mutants.py)."""
import pytest

from infini_attention.conformance.mutants import CONTROL, MUTANTS, OBSERVABLE_AT
from infini_attention.conformance.properties import PROPERTIES, Settings
from infini_attention.conformance.runner import FAIL, PASS, UNSUPPORTED
from infini_attention.conformance.selftest import catch, control_passes

SETTINGS = Settings(dtype="float32", max_examples=30, seed=0, shrink=False)

# The mistakes the issue names, each realised by at least one mutant.
ISSUE_LIST = {
    "gate on wrong branch": "gate_swapped", "memory updated before retrieval": "update_before_read",
    "RoPE applied to memory keys": "rope_on_memory", "wrong GQA mapping": "gqa_modulo",
    "missing eps / no max": "no_eps", "z not accumulated": "z_not_accumulated", "delta rule missing": "delta_ignored",
    "positions from the stream start": "rope_stream_positions", "softmax scale sqrt(d_model)": "scale_d_model",
    "memory written on partial segments": "write_partial", "head reshaping with wrong interleave": "head_interleave",
    "state not carried between calls": "state_not_carried", "off-by-one causal mask": "causal_off_by_one",
    "bf16 state": "bf16_state",
    # issue 12's further deviation classes
    "normaliser not starting at 0": "z_init_nonzero", "one gate for all heads": "shared_gate",
    "state kept in the instance": "memory_in_instance", "RoPE positions from the stream start": "rope_stream_positions",
    "heads reshaped without transpose": "head_no_transpose",
}


def test_every_listed_mistake_has_a_mutant():
    assert set(ISSUE_LIST.values()) <= set(MUTANTS)
    assert all(expected in PROPERTIES for _, expected in MUTANTS.values())


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_rejected_by_its_property(mutant):
    row = catch(mutant, SETTINGS, full=False)
    assert not row.errors, f"suite errors: {row.errors}"
    assert row.caught_by == [MUTANTS[mutant][1]], (
        f"{mutant} ({MUTANTS[mutant][0]}) expected to be rejected by {MUTANTS[mutant][1]}, got {row.caught_by}")
    failed = next(r for r in row.results if r.verdict == FAIL)
    with pytest.raises(AssertionError):  # its printed reproduction fails on its own too
        exec(compile(failed.repro, f"<repro of {mutant}>", "exec"), {})  # noqa: S102


def test_combined_mutants_compose_and_masking_pairs_are_refused():
    from infini_attention.conformance.contract import load_impl
    from infini_attention.conformance.mutants import MASKING, equations, mutant_factory

    impl = load_impl("infini_attention.conformance.mutants:gate_swapped+no_eps+state_not_carried")
    assert impl.factory.bugs == ("gate_swapped", "no_eps", "state_not_carried")
    eq = equations(("rope_stream_positions", "rope_call_positions"))
    q, k = eq.rope_positions(2, 3, 5, 4, None)  # both apply: from the call start and the stream start
    assert q.tolist() == [20, 21, 22] and k.tolist() == [20, 21, 22, 23, 24]
    for pair in MASKING:
        with pytest.raises(AttributeError, match="cannot be combined"):
            mutant_factory("+".join(sorted(pair)))


def test_rope_stream_positions_is_invisible_in_exact_arithmetic():
    """RoPE is relative: counting positions from the stream start changes nothing in float64, so
    the suite must not reject it there (it decides only by what the spec's outputs define)."""
    assert OBSERVABLE_AT["rope_stream_positions"] == "bfloat16"
    row = catch("rope_stream_positions", Settings(dtype="float64", max_examples=10, shrink=False), full=False)
    assert row.dtype == "bfloat16" and row.caught_by == ["long_stream"]


def test_control_passes_everything():
    assert control_passes(Settings(dtype="float32", max_examples=12, seed=1, shrink=False))


def test_control_in_float64_passes_and_declares_all():
    from infini_attention.conformance.contract import load_impl
    from infini_attention.conformance.runner import run_suite

    results = run_suite(load_impl(f"infini_attention.conformance.mutants:{CONTROL}"),
                        Settings(dtype="float64", max_examples=8))
    assert {r.verdict for r in results} == {PASS}, [(r.name, r.verdict, r.message) for r in results]
    assert UNSUPPORTED not in {r.verdict for r in results} and FAIL not in {r.verdict for r in results}

"""Issue 13's conformance rows: nothing hangs, an implementation that raises anything is a failure (never the
suite's exit), nothing passes vacuously (inconclusive and "nothing checked" have their own exit status)."""
import os
import signal
import textwrap

import pytest

from infini_attention import reference as R
from infini_attention.conformance.contract import from_forward
from infini_attention.conformance.properties import PROPERTIES, Settings
from infini_attention.conformance.runner import (EXIT_INCONCLUSIVE, FAIL, INCONCLUSIVE, NOTHING_CHECKED, PASS,
                                                 exit_code, run_property, run_suite)
from infini_attention.reference.cli import main

CAPS = {"chunked", "canonical_state", "float64"}


def impl_of(forward, caps=CAPS, **attrs):
    return from_forward(forward, caps, "test-impl", **attrs)


def ref_forward(self, params, x, state=None):
    return R.forward(self.config, params, x, state)


def raising(exc):
    def forward(self, params, x, state=None):
        raise exc
    return forward


@pytest.mark.parametrize("exc, name", [(SystemExit(3), "SystemExit"), (KeyboardInterrupt(), "KeyboardInterrupt"),
                                       (GeneratorExit(), "GeneratorExit"), (type("Odd", (BaseException,), {})(), "Odd")])
def test_anything_the_implementation_raises_is_a_failure(exc, name):
    results = run_suite(impl_of(raising(exc)), Settings(dtype="float64", max_examples=3), only=["outputs", "causality"])
    assert [r.verdict for r in results] == [FAIL, FAIL], [r.message for r in results]  # the suite went on
    assert f"raised {name}" in results[0].message and "forward, call 1" in results[0].message


def test_the_users_ctrl_c_still_stops_the_suite():
    def forward(self, params, x, state=None):
        os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as from the terminal
        return ref_forward(self, params, x, state)
    with pytest.raises(KeyboardInterrupt):
        run_suite(impl_of(forward), Settings(dtype="float64", max_examples=3), only=["outputs"])


def test_a_hung_call_fails_its_property_naming_the_call_and_the_suite_goes_on():
    calls = []

    def forward(self, params, x, state=None):
        calls.append(1)
        while True:  # an implementation that never returns
            pass
    s = Settings(dtype="float64", max_examples=4, call_timeout=0.5)
    results = run_suite(impl_of(forward), s, only=["outputs", "output_contract"])
    hung = results[0]
    assert hung.verdict == FAIL and "did not return within 0.5 s" in hung.message and "forward, call 1" in hung.message
    assert hung.repro and "Session(" in hung.repro  # the hanging example, not a shrunk trivial one
    assert results[1].name == "output_contract" and results[1].verdict == FAIL  # went on (and hung again)
    assert len(calls) < 20  # no shrinking through hangs


def test_few_examples_are_inconclusive_not_a_pass(capsys):
    taken = []  # the instances it accepts: the first 3, whatever Hypothesis draws (a rare config is not
                # rare enough: how often Hypothesis draws one depends on its version and what ran before)

    def forward(self, params, x, state=None):
        if not any(self is t for t in taken):
            if len(taken) == 3:
                from infini_attention.conformance import NotSupported
                raise NotSupported("only 3 instances")
            taken.append(self)
        return ref_forward(self, params, x, state)
    r = run_property(PROPERTIES["outputs"], impl_of(forward), Settings(dtype="float64", max_examples=30))
    assert r.verdict == INCONCLUSIVE and "at least 10 needed" in r.message and r.examples < 10
    ok = run_property(PROPERTIES["outputs"], impl_of(ref_forward), Settings(dtype="float64", max_examples=30))
    assert exit_code([ok, r]) == EXIT_INCONCLUSIVE == 4 and exit_code([r]) == NOTHING_CHECKED
    assert exit_code([ok]) == 0 and ok.verdict == PASS


ADAPTER = textwrap.dedent("""
    import os, signal, time
    from infini_attention import reference as R

    class Impl:
        capabilities = {"float64", "chunked"}
        def __init__(self, config):
            self.config = config
        def forward(self, params, x, state=None):
            if x.shape[1] > 2 and MODE == "segfault":
                os.kill(os.getpid(), signal.SIGSEGV)
            if x.shape[1] > 2 and MODE == "native_hang":
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the time limit cannot reach it
                time.sleep(60)
            if MODE == "exit":
                os._exit(7)
            return R.forward(self.config, params, x, state)

    def make(config):
        return Impl(config)
    make.capabilities = Impl.capabilities
""")


@pytest.mark.parametrize("mode, message", [("segfault", "killed by signal SIGSEGV"), ("exit", "exit code 7"),
                                           ("native_hang", "could not be interrupted (native code)")])
def test_isolated_suite_survives_crashes_and_native_hangs(mode, message, tmp_path, monkeypatch, capsys):
    (tmp_path / f"crashy_{mode}.py").write_text(f"MODE = {mode!r}\n" + ADAPTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    from infini_attention.conformance import supervise
    monkeypatch.setattr(supervise, "GRACE", 1.0)
    code = main(["conformance", "--impl", f"crashy_{mode}:make", "--dtype", "float64", "--max-examples", "3",
                 "--only", "outputs,fresh_stream", "--call-timeout", "1", "-q", "--no-diagnose"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert message in out and "the suite went on in a fresh process" in out
    assert "fresh_stream" in out.split("DOES NOT CONFORM")[0]  # the second property still ran and was reported


def test_call_timeout_is_validated_before_anything_runs(capsys):
    assert main(["conformance", "--impl", "infini_attention.conformance.adapters.reference:make",
                 "--call-timeout", "-1"]) == 2
    assert "--call-timeout: expected a number of seconds >= 0" in capsys.readouterr().err

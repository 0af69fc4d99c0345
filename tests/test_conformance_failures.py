"""A broken implementation is a failed property with a clear message, never a crash of the suite; a
failure shows the smallest case and Python that reproduces it; unsupported configs are not failures."""
import numpy as np
import pytest

from infini_attention import reference as R
from infini_attention.conformance import NotSupported
from infini_attention.conformance.contract import UsageError, from_factory, from_forward, load_impl
from infini_attention.conformance.properties import PROPERTIES, Settings
from infini_attention.conformance.runner import ERROR, FAIL, PASS, UNSUPPORTED, run_property, run_suite

SETTINGS = Settings(dtype="float64", max_examples=6)
CAPS = {"delta", "gqa", "rope", "chunked", "canonical_state", "float64"}


def impl_of(forward, caps=CAPS, **attrs):
    return from_forward(forward, caps, "test-impl", **attrs)


def ref_forward(self, params, x, state=None):
    return R.forward(self.config, params, x, state)


BROKEN = {
    "raises": (lambda self, p, x, s=None: 1 / 0, "raised ZeroDivisionError: division by zero"),
    "wrong_shape": (lambda self, p, x, s=None: (np.zeros((1, 1, 7)), s), "expected shape (B, T, D)"),
    "wrong_dtype": (lambda self, p, x, s=None: (ref_forward(self, p, x, s)[0].astype(np.float32), None),
                    "expected dtype float64 (the checked dtype), got float32"),
    "nan": (lambda self, p, x, s=None: (np.full(x.shape[:2] + (self.config.d_model,), np.nan), s), "NaN/Inf"),
    "not_a_pair": (lambda self, p, x, s=None: ref_forward(self, p, x, s)[0], "expected a (y, state) pair"),
    "not_an_array": (lambda self, p, x, s=None: ("y", s), "expected a floating-point NumPy array"),
    "no_canonical_state": (lambda self, p, x, s=None: (ref_forward(self, p, x, None)[0], object()),
                           "exposes no 'M'"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_contract_violations_fail_with_a_clear_message(name):
    forward, expected = BROKEN[name]
    r = run_property(PROPERTIES["outputs" if name != "no_canonical_state" else "state"], impl_of(forward), SETTINGS)
    assert r.verdict == FAIL and expected in r.message, r.message
    assert r.repro and r.example["config"] is not None


def test_failure_reports_the_smallest_case_and_a_repro_that_reproduces(capsys):
    r = run_property(PROPERTIES["first_segment"], load_impl("infini_attention.conformance.mutants:"
                                                            "local_only_undeclared"),
                     Settings(dtype="float32", max_examples=20))
    assert r.verdict == FAIL and "MISMATCH" in r.message and "--profile first_segment=local_only" in r.message
    ex = r.example
    assert ex["config"]["d_model"] == 1 and ex["T"] <= ex["config"]["segment_len"]  # shrunk
    assert "params_from_seed(config," in r.repro and "Session(" in r.repro
    with pytest.raises(AssertionError, match="MISMATCH"):
        exec(r.repro, {})  # noqa: S102 - the printed reproduction runs and fails the same way
    assert "MISMATCH" in capsys.readouterr().out


def test_unsupported_configs_are_not_failures():
    def forward(self, params, x, state=None):
        if self.config.update == "delta":
            raise NotSupported("no delta rule")
        return R.forward(self.config, params, x, state)

    r = run_property(PROPERTIES["update_rule"], impl_of(forward), SETTINGS)
    assert r.verdict == PASS and "refused" in r.message

    def refuse_all(self, params, x, state=None):
        raise NotSupported("nothing")
    r = run_property(PROPERTIES["outputs"], impl_of(refuse_all), SETTINGS)
    assert r.verdict == UNSUPPORTED and "nothing" in r.message


def test_missing_capability_is_not_supported():
    results = run_suite(impl_of(ref_forward, caps={"float64"}), SETTINGS)
    v = {r.name: r.verdict for r in results}
    assert v["gqa_mapping"] == v["state"] == v["gradients"] == UNSUPPORTED
    assert v["outputs"] == v["split_invariance"] == PASS  # calls cut on segment boundaries only
    assert not any(r.verdict in (FAIL, ERROR) for r in results)


def test_undeclared_dtype_is_not_supported():
    results = run_suite(impl_of(ref_forward), Settings(dtype="bfloat16", max_examples=3))
    assert {r.verdict for r in results} == {UNSUPPORTED}


def test_hidden_state_in_the_instance_is_caught():
    def forward(self, params, x, state=None):
        y, st = R.forward(self.config, params, x, state if state is not None else getattr(self, "kept", None))
        self.kept = st
        return y, st
    r = run_property(PROPERTIES["fresh_stream"], impl_of(forward), SETTINGS)
    assert r.verdict == FAIL


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("infini_attention.reference:nope", "has no callable 'nope'"),
    ("just_a_name", "expected 'package.module:factory'"),
    ("missing.onnx", "does not exist"),
])
def test_bad_impl_paths_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        load_impl(spec)


def test_bad_declarations_are_usage_errors():
    def make(config):
        return object()
    make.capabilities = {"float32", "chunkd"}
    with pytest.raises(UsageError, match="unknown capabilities"):
        from_factory("x", make)
    make.capabilities = None
    with pytest.raises(UsageError, match="declares no `capabilities`"):
        from_factory("x", make)

"""Correct implementations pass: the reference, the PyTorch implementation in every dtype, an exported
ONNX model; the third-party adapter passes under its declared profile (SPEC.md §8.2)."""
import importlib.util

import numpy as np
import pytest

from infini_attention.conformance.contract import load_impl
from infini_attention.conformance.properties import Settings
from infini_attention.conformance.runner import ERROR, FAIL, PASS, UNSUPPORTED, run_suite

TORCH = "infini_attention.conformance.adapters.torch_impl:make"
REFERENCE = "infini_attention.conformance.adapters.reference:make"
THIRD_PARTY = "infini_attention.conformance.adapters.infini_transformer_pytorch:make"


def verdicts(spec, only=None, **settings):
    results = run_suite(load_impl(spec), Settings(**settings), only=only)
    bad = [(r.name, r.verdict, r.message) for r in results if r.verdict in (FAIL, ERROR)]
    return {r.name: r.verdict for r in results}, bad


def test_reference_conforms():
    v, bad = verdicts(REFERENCE, dtype="float64", max_examples=10)
    assert not bad
    assert v["gradients"] == UNSUPPORTED and sum(x == PASS for x in v.values()) == len(v) - 1


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "float16"])
def test_torch_impl_conforms(dtype):
    v, bad = verdicts(TORCH, dtype=dtype, max_examples=10)
    assert not bad
    assert set(v.values()) == {PASS}


def test_torch_impl_conforms_under_the_other_profile():
    profile = {"gate_on": "local", "first_segment": "local_only"}
    v, bad = verdicts(TORCH, dtype="float32", max_examples=8, profile=profile)
    assert not bad and set(v.values()) == {PASS}


def test_exported_onnx_conforms(tmp_path):
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("infini_attention.export.exporter")
    from infini_attention.reference import InfiniConfig, init_params

    config = InfiniConfig(d_model=8, n_heads=4, n_kv_heads=2, d_key=4, d_value=3, segment_len=4, update="delta",
                          rope_theta=10000.0)
    path = tmp_path / "layer.onnx"
    export.export(config, init_params(config, 0), path, check=False)
    v, bad = verdicts(str(path), dtype="float32", max_examples=6)
    assert not bad
    assert v["outputs"] == v["state"] == v["split_invariance"] == v["gqa_mapping"] == PASS
    assert v["gradients"] == UNSUPPORTED  # an ONNX file has no backward pass


@pytest.mark.skipif(importlib.util.find_spec("infini_transformer_pytorch") is None,
                    reason="optional extra: pip install 'infini-attention[thirdparty]'")
def test_third_party_conforms_under_its_profile_only():
    profile = {"gate_on": "local", "first_segment": "local_only"}
    v, bad = verdicts(THIRD_PARTY, dtype="float32", max_examples=6, profile=profile)
    assert not bad and v["gqa_mapping"] == UNSUPPORTED
    v, bad = verdicts(THIRD_PARTY, ["gate_limits", "first_segment", "causality"], dtype="float32",
                      max_examples=6)  # the spec's default conventions
    assert {"gate_limits", "first_segment"} <= {name for name, _, _ in bad}


def test_low_precision_inputs_are_the_rounded_values():
    from infini_attention.conformance.harness import handed_over, round_to

    a = np.array([1 + 2**-9, 1 + 2**-7, 3.14159])
    assert round_to(a, "bfloat16").tolist() == [1.0, 1 + 2**-7, 3.140625]
    assert handed_over(a, "bfloat16").dtype == np.float32 and handed_over(a, "float16").dtype == np.float16


COT = "infini_attention.conformance.adapters.cot_optimized_qkv:make"


@pytest.mark.skipif(not __import__("os").environ.get("INFINI_COT_QKV_DIR"),
                    reason="cot-optimized-qkv shadows this package: pip install --no-deps --target DIR "
                           "cot-optimized-qkv and set INFINI_COT_QKV_DIR=DIR")
def test_cot_optimized_qkv_verdict_and_diagnosis():
    from infini_attention.conformance.diagnosis import diagnose

    impl = load_impl(COT)
    assert impl.pins["d_model"] == "heads" and "chunked" not in impl.capabilities
    s = Settings(dtype="float32", max_examples=10)
    results = run_suite(impl, s, only=["outputs", "update_rule", "causality", "head_layout", "gradients"])
    v = {r.name: r.verdict for r in results}
    assert v["outputs"] == v["update_rule"] == FAIL and v["causality"] == v["head_layout"] == PASS
    causes = [c.id for c in diagnose(impl, s, results).likely()]
    assert causes[:1] == ["rope_on_memory"] and "write_partial" in causes

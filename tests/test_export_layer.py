"""ONNX export of one Infini-attention layer: ORT vs the reference for any split into calls."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infini_attention.conformance.strategies import configs, splits
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.export import InfiniSession, export, preset_params
from infini_attention.export.exporter import rounded_params
from infini_attention.export.io_check import check_io
from infini_attention.reference.io_spec import SYMBOLIC_DIMS
from infini_attention.export.selfcheck import feed_split
from infini_attention.reference import InfiniConfig, forward

CONFIGS = {
    "linear-gqa-rope": InfiniConfig(d_model=12, n_heads=4, n_kv_heads=2, d_key=6, d_value=5, segment_len=5,
                                    rope_theta=10000.0),
    "delta-local_only": InfiniConfig(d_model=8, n_heads=3, n_kv_heads=1, d_key=4, d_value=4, segment_len=4,
                                     update="delta", first_segment="local_only", rope_theta=10.0,
                                     rope_style="interleaved"),
    "gate_local-norope-scale": InfiniConfig(d_model=5, n_heads=2, n_kv_heads=2, d_key=3, d_value=7, segment_len=3,
                                            gate_on="local", scale=0.3, update="delta"),
    "segment_len_1": InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=3, segment_len=1),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def layer(request, tmp_path_factory):
    config = CONFIGS[request.param]
    params = preset_params(config, seed=3)
    path = tmp_path_factory.mktemp("layer") / f"{request.param}.onnx"
    result = export(config, params, path)
    return config, params, path, InfiniSession(path, provider="cpu"), result


def _compare(config, params, sess, x, y):
    expected, ref_state = forward(config, rounded_params(params, "float32"), x.astype(np.float32).astype(np.float64))
    assert_close("y", y, expected, "float32")
    got = sess.state()
    assert_close("M", got["past_memory.0.M"], ref_state.M, "float32", STATE_TOLERANCES)
    assert_close("z", got["past_memory.0.z"], ref_state.z, "float32", STATE_TOLERANCES)
    assert_close("k", got["past_key_values.0.key"], ref_state.k, "float32", STATE_TOLERANCES)
    assert_close("v", got["past_key_values.0.value"], ref_state.v, "float32", STATE_TOLERANCES)
    assert int(got["past_segments"]) == ref_state.segments == sess.segments


def test_export_self_check_ran(layer):
    _, _, path, _, result = layer
    assert path.exists() and result.checks and all(": ok (" in line for line in result.checks)


@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_split_matches_reference(layer, data):
    config, params, _, sess, _ = layer
    T = data.draw(st.integers(0, 4 * config.segment_len + 2), label="T")
    B = data.draw(st.integers(1, 3), label="B")
    split = data.draw(splits(T))
    x = np.random.default_rng(T).standard_normal((B, T, config.d_model))
    _compare(config, params, sess, x, feed_split(sess, x, split))


def test_prefill_then_token_by_token_across_boundaries(layer):
    config, params, _, sess, _ = layer
    N = config.segment_len
    T = 3 * N + 2
    x = np.random.default_rng(0).standard_normal((2, T, config.d_model))
    split = [N + N // 2 + 1] + [1] * (T - (N + N // 2 + 1))  # a long prefill, then one token per call
    _compare(config, params, sess, x, feed_split(sess, x, split))


def test_graph_dims_are_symbolic(layer):
    config, _, path, _, _ = layer
    model = onnx.load(str(path))
    assert check_io(model, config) == []
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["x"] == ["batch", "chunk", config.d_model]
    assert dims["past_key_values.0.key"] == ["batch", config.n_kv_heads, "past_len", config.d_key]
    assert dims["present.0.value"] == ["batch", config.n_kv_heads, "present_len", config.d_value]
    assert dims["past_segments"] == []
    symbolic = {d for ds in dims.values() for d in ds if isinstance(d, str)}
    assert symbolic == set(SYMBOLIC_DIMS)


@settings(max_examples=4, deadline=None)
@given(config=configs(max_segment_len=5), data=st.data())
def test_random_configs_export_and_stream(tmp_path_factory, config, data):
    """Any config of the conformance strategies exports (its self-check passes) and streams exactly."""
    params = preset_params(config, seed=1)
    path = tmp_path_factory.mktemp("cfg") / "layer.onnx"
    export(config, params, path)
    sess = InfiniSession(path, provider="cpu")
    T = data.draw(st.integers(1, 3 * config.segment_len + 1), label="T")
    x = np.random.default_rng(1).standard_normal((2, T, config.d_model))
    _compare(config, params, sess, x, feed_split(sess, x, data.draw(splits(T))))


def test_float16_layer_with_one_kv_head_exports(tmp_path):
    """Regression: float16 with n_kv_heads = 1 and N >= 5 (the boundary form is traced, its pending keys have an
    example length of 0) failed torch.export with a ZeroDivisionError in the stride rule of the keys' cast to
    float32 (graph._float32 casts them flat)."""
    config = InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=4, segment_len=5, rope_theta=1e4)
    r = export(config, preset_params(config), tmp_path / "f16.onnx", dtype="float16")
    assert r.dtype == "float16" and len(r.checks) == 10  # streamed against the reference by the self-check

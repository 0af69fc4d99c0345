"""ONNX export of the Infini-Transformer LM: splits, metadata, generation, state files, float16."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infini_attention.conformance.strategies import splits
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.export import METADATA_KEYS, InfiniSession, export, preset_config, preset_params
from infini_attention.export.checkpoint import params_from_onnx
from infini_attention.export.exporter import rounded_params
from infini_attention.export.io_check import check_io
from infini_attention.export.selfcheck import feed_split
from infini_attention.reference.io_spec import config_from_json
from infini_attention.reference import lm_forward


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = preset_config("tiny")
    params = preset_params(config, seed=5)
    path = tmp_path_factory.mktemp("lm") / "tiny.onnx"
    result = export(config, params, path)
    return config, params, path, result


@pytest.fixture
def sess(tiny):
    return InfiniSession(tiny[2], provider="cpu")


def _reference(config, params, ids, dtype="float32"):
    return lm_forward(config, rounded_params(params, dtype), ids)


def _assert_states(sess, ref_states, dtype="float32"):
    got = sess.state()
    for i, s in enumerate(ref_states):
        assert_close(f"layer {i} M", got[f"past_memory.{i}.M"], s.M, dtype, STATE_TOLERANCES)
        assert_close(f"layer {i} z", got[f"past_memory.{i}.z"], s.z, dtype, STATE_TOLERANCES)
        assert_close(f"layer {i} k", got[f"past_key_values.{i}.key"], s.k, dtype, STATE_TOLERANCES)
        assert_close(f"layer {i} v", got[f"past_key_values.{i}.value"], s.v, dtype, STATE_TOLERANCES)
    assert int(got["past_segments"]) == ref_states[0].segments


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_split_matches_reference(tiny, sess, data):
    config, params, _, _ = tiny
    T = data.draw(st.integers(0, 5 * config.attn.segment_len + 3), label="T")
    B = data.draw(st.integers(1, 2), label="B")
    ids = np.random.default_rng(T).integers(0, config.vocab_size, (B, T))
    logits = feed_split(sess, ids, data.draw(splits(T)))
    expected, states = _reference(config, params, ids)
    assert_close("logits", logits, expected, "float32")
    _assert_states(sess, states)


def test_long_prefill_then_tokens_across_boundaries(tiny, sess):
    config, params, _, _ = tiny
    N = config.attn.segment_len
    prefill = 40 * N + 3  # many segments in one call
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (1, prefill + 2 * N + 1))
    logits = feed_split(sess, ids, [prefill] + [1] * (2 * N + 1))
    expected, states = _reference(config, params, ids)
    assert_close("logits", logits, expected, "float32")
    _assert_states(sess, states)
    assert sess.position == ids.shape[1] and sess.pending == ids.shape[1] % N


def test_symbolic_dims_and_metadata_round_trip(tiny):
    config, params, path, result = tiny
    model = onnx.load(str(path))
    assert check_io(model, config) == []
    meta = {p.key: p.value for p in model.metadata_props}
    assert config_from_json(meta[METADATA_KEYS["config"]]) == config
    assert meta[METADATA_KEYS["model_id"]] == result.model_id
    assert meta[METADATA_KEYS["compute_dtype"]] == "float32" and meta[METADATA_KEYS["state_dtype"]] == "float32"
    first = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in first] == ["batch", "chunk"]
    config2, params2 = params_from_onnx(path)
    assert config2 == config
    for name, arr in rounded_params(params, "float32").items():
        np.testing.assert_array_equal(params2[name], arr, err_msg=name)


def test_static_dim_is_reported(tiny, tmp_path):
    config, _, path, _ = tiny
    model = onnx.load(str(path))
    dim = model.graph.input[0].type.tensor_type.shape.dim[1]
    dim.dim_value = 7  # what a specialising exporter would leave
    problems = check_io(model, config)
    assert any("input_ids dim 1: expected symbolic 'chunk', got static 7" in p for p in problems)


def test_generate_greedy_matches_reference(tiny, sess):
    config, params, _, _ = tiny
    prompt = np.random.default_rng(2).integers(0, config.vocab_size, (2, 11))
    out = sess.generate(13, prompt)
    ids = prompt
    for i in range(13):  # the reference, re-run on the whole prefix each time
        logits, _ = _reference(config, params, ids)
        nxt = logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(out[:, i], nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    assert sess.position == 11 + 13


def test_generate_sampled_is_reproducible(tiny, sess):
    config = tiny[0]
    prompt = np.arange(9)
    a = sess.generate(20, prompt, temperature=0.8, top_k=10, seed=3)
    sess.reset()
    b = sess.generate(20, prompt, temperature=0.8, top_k=10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 20) and 0 <= a.min() and a.max() < config.vocab_size


def test_state_save_restore_is_exact(tiny, sess, tmp_path):
    config = tiny[0]
    ids = np.random.default_rng(4).integers(0, config.vocab_size, (2, 45))
    whole = feed_split(sess, ids, [21, 1, 23])  # the same calls as below: bit-exact
    final = sess.state()
    sess.reset(2)
    sess.feed(ids[:, :21])
    saved = sess.save_state(tmp_path / "s.npz")
    other = InfiniSession(tiny[2], provider="cpu")
    other.load_state(saved)
    assert other.position == 21 and other.batch == 2 and other.pending == 21 % config.attn.segment_len
    rest = np.concatenate([other.feed(ids[:, 21:22]), other.feed(ids[:, 22:])], axis=1)
    np.testing.assert_array_equal(rest, whole[:, 21:])  # bit-exact: same graph, same pieces
    for name, arr in other.state().items():
        np.testing.assert_array_equal(arr, final[name], err_msg=name)


def test_float16_export_keeps_state_float32(tmp_path):
    config = preset_config("tiny")
    params = preset_params(config, seed=6)
    result = export(config, params, tmp_path / "tiny16.onnx", dtype="float16")
    sess = InfiniSession(result.path, provider="cpu")
    assert sess.compute_dtype == "float16"
    ids = np.random.default_rng(7).integers(0, config.vocab_size, (1, 30))
    logits = feed_split(sess, ids, [13, 1, 1, 15])
    expected, states = _reference(config, params, ids, "float16")
    assert logits.dtype == np.float32
    assert_close("logits", logits, expected, "float16")
    assert all(a.dtype == np.float32 for n, a in sess.state().items() if n != "past_segments")
    _assert_states(sess, states, "float16")
    meta = json.loads(json.dumps({p.key: p.value for p in onnx.load(str(result.path)).metadata_props}))
    assert meta[METADATA_KEYS["compute_dtype"]] == "float16"


def test_state_snapshot_is_not_aliased(tiny, sess):
    """state() and feed() return arrays the caller owns: ORT reusing its buffers cannot change them."""
    config = tiny[0]
    ids = np.random.default_rng(8).integers(0, config.vocab_size, (1, 200))
    for start in (0, 13):
        sess.reset(1)
        sess.feed(ids[:, :start])
        snapshot = sess.state()
        frozen = {k: v.copy() for k, v in snapshot.items()}
        logits = sess.feed(ids[:, start:start + 5])
        kept = logits.copy()
        for i in range(start + 5, 200):
            sess.feed(ids[:, i:i + 1])
        junk = [np.full(a.shape, np.nan, np.float32) for a in snapshot.values() for _ in range(20)]
        for name in frozen:
            np.testing.assert_array_equal(snapshot[name], frozen[name], err_msg=name)
        np.testing.assert_array_equal(logits, kept)
        del junk

"""StreamPool (export/pool.py) over the many-streams ONNX export: every stream's outputs and state equal the
same stream run alone in an InfiniSession, with streams joining and leaving; park/resume; bad input."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from infini_attention.conformance import strategies as S
from infini_attention.export import InfiniSession
from infini_attention.export.pool import StreamPool
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close


def _tokens(config, s, T):
    return np.random.default_rng(100 + s).integers(0, config.vocab_size, T)


def _alone(path, ids):
    sess = InfiniSession(path, provider="cpu")
    return sess.feed(ids[None])[0], sess


def _same_as_alone(pool, stream_id, path, ids, outs):
    y_ref, sess = _alone(path, ids)
    # both float32 ONNX Runtime graphs of one model: they differ in summation order only (§11's float32 row)
    assert_close(f"stream {stream_id} logits", np.concatenate(outs), y_ref, "float32")
    ref, got = sess.state(), pool.state(stream_id)
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        assert_close(f"stream {stream_id} {name}", got[name], ref[name], "float32", STATE_TOLERANCES)
    assert pool.position(stream_id) == sess.position


@pytest.fixture(scope="module")
def pool(served_lm):
    return StreamPool(served_lm[3])


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sched=S.schedules(N=3, max_streams=6))
def test_streams_joining_and_leaving_equal_each_run_alone(served_lm, pool, sched):
    config, path = served_lm[0], served_lm[2]
    for s in list(pool.streams):
        pool.drop(s)
    ids = [_tokens(config, s, T) for s, T in enumerate(sched.lengths)]
    fed, outs = [0] * len(ids), [[] for _ in ids]
    for r in range(sched.rounds):
        chunks = {}
        for s, t in sched.round(r).items():
            if s not in pool:
                pool.add(s)
            chunks[s] = ids[s][fed[s]:fed[s] + t]
            fed[s] += t
        for key, y in pool.feed(chunks).items():
            outs[int(key)].append(y)
        for s in sched.round(r):  # a stream that brought its last chunk leaves
            if fed[s] == len(ids[s]) and sched.round(r + 1).get(s) is None:
                _same_as_alone(pool, s, path, ids[s], outs[s])
                pool.drop(s)


def test_park_resume_moves_a_stream_between_pool_and_session(served_lm, tmp_path):
    config, path = served_lm[0], served_lm[2]
    ids = _tokens(config, 0, 11)
    pool = StreamPool(path)  # a stateful export: the pool makes its ragged export itself
    pool.add("a")
    first = pool.feed({"a": ids[:5]})["a"]
    blob = pool.park("a")
    assert "a" not in pool
    pool.resume(blob, "b")
    second = pool.feed({"b": ids[5:8]})["b"]
    pool.park("b", tmp_path / "b.npz")
    sess = InfiniSession(path, provider="cpu")
    sess.load_state(tmp_path / "b.npz")  # the pool's file is the session's format
    third = sess.feed(ids[None, 8:])[0]
    y_ref, _ = _alone(path, ids)
    assert_close("logits across pool, bytes, file, session", np.concatenate([first, second, third]), y_ref, "float32")


def test_generate_matches_session(served_lm, pool):
    config, path = served_lm[0], served_lm[2]
    for s in list(pool.streams):
        pool.drop(s)
    prompts = {s: _tokens(config, s, T) for s, T in enumerate([1, 4, 7])}
    for s, p in prompts.items():
        pool.add(s)
    pool.feed(prompts, outputs="none")
    got = pool.generate(list(prompts), 6)
    for s, p in prompts.items():
        sess = InfiniSession(path, provider="cpu")
        want = sess.generate(6, p[None])[0]
        np.testing.assert_array_equal(got[str(s)], want)


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.feed({"nobody": [1]}), "stream_id: expected a stream in the pool"),
    (lambda p: p.feed({"x": np.array([1.5])}), "input_ids: expected an integer array of shape (B, T), got float64"),
    (lambda p: p.feed({"x": np.ones((2, 3), np.int64)}), "expected integer ids of shape (T,) or (1, T), got int64 (2, 3)"),
    (lambda p: p.feed({"x": [99]}), "expected token ids in [0, 13)"),
    (lambda p: p.feed({"x": np.zeros(9, np.int64)}), "expected at most max_chunk=8 tokens, got 9"),
    (lambda p: p.add("x"), "already in the pool"),
    (lambda p: p.resume(b"not a state file", "y"), "expected an .npz archive"),
    (lambda p: p.feed({"x": [1]}, outputs="some"), "outputs: expected 'all', 'last' or 'none'"),
])
def test_bad_input_is_one_line_and_changes_nothing(served_lm, make, expected):
    pool = StreamPool(served_lm[3], max_chunk=8)
    pool.add("x")
    pool.feed({"x": [1, 2]})
    before = pool.state("x")
    with pytest.raises(ValueError) as err:
        make(pool)
    assert expected in str(err.value) and "\n" not in str(err.value)
    after = pool.state("x")
    assert all(np.array_equal(before[k], after[k]) for k in before) and pool.position("x") == 2


def test_not_an_infini_model(tmp_path):
    import onnx
    from onnx import helper

    g = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                          [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="model: expected a stateful export"):
        StreamPool(tmp_path / "other.onnx")

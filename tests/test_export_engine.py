"""InfiniSession's decode graph (export/engine.py): the file's inside branch as a graph of its own, which runs the
calls that stay inside their segment. It gives what the file's own graph gives, it really is what runs those
calls, and it leaves the pass-through outputs (M, z, past_segments) to the session."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from infini_attention.export import InfiniSession, export, preset_config, preset_params
from infini_attention.export.compose import inside_model
from infini_attention.export.selfcheck import feed_split
from infini_attention.reference import lm_forward
from infini_attention.export.exporter import rounded_params
from infini_attention.reference.tolerances import assert_close

CONFIG = preset_config("tiny")
PARAMS = preset_params(CONFIG, seed=3)
N = CONFIG.attn.segment_len
OPSETS = (23, 17)
# inside calls (1, 2), a chunk, one token at a time across a boundary (the last one a piece), a long chunk
SPLIT = [1, 2, N + 3] + [1] * (N + 2) + [3 * N + 1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    return {opset: export(CONFIG, PARAMS, d / f"tiny-{opset}.onnx", opset=opset).path for opset in OPSETS}


@pytest.mark.parametrize("opset", OPSETS)
def test_decode_graph_gives_the_file_graphs_results(files, opset):
    ids = np.random.default_rng(opset).integers(0, CONFIG.vocab_size, (2, sum(SPLIT)))
    fast, plain = (InfiniSession(files[opset], provider="cpu", decode_graph=flag) for flag in (True, False))
    assert fast.decode_graph and not plain.decode_graph
    got, want = feed_split(fast, ids, SPLIT), feed_split(plain, ids, SPLIT)
    # The same nodes in both; only ONNX Runtime's fusions may differ without the If: agreement to float32 rounding.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    a, b = fast.state(), plain.state()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=name)
    expected, states = lm_forward(CONFIG, rounded_params(PARAMS, "float32"), ids)
    assert_close("logits", got, expected, "float32")  # and both are the reference's
    assert int(a["past_segments"]) == states[0].segments and fast.position == plain.position == ids.shape[1]


def test_decoding_calls_run_on_the_decode_graph(files, tmp_path):
    sess = InfiniSession(files[23], provider="cpu", profile=str(tmp_path / "prof"))
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (1, 2 * N))
    sess.feed(ids[:, :N + 1], outputs="none")  # a chunk: the file's graph
    for i in range(N + 1, N + 4):  # three calls inside the segment: the decode graph
        sess.feed(ids[:, i:i + 1], outputs="last")
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    decode = [e for e in runs if e.get("args", {}).get("graph") == "decode"]
    assert len(decode) == 3 and len(runs) == 4
    assert all(e["ts"] > max(r["ts"] for r in runs if r not in decode) for e in decode)  # one clock for both
    decode_ops = {e["args"].get("op_name") for e in events
                  if e.get("cat") == "Node" and e.get("args", {}).get("graph") == "decode"}
    assert "If" not in decode_ops and "MatMul" in decode_ops
    assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]  # both sessions' events in the one file


def test_inside_model_leaves_pass_through_outputs_to_the_session(files):
    model = onnx.load(str(files[23]))
    inside, passed = inside_model(model)
    L = CONFIG.n_layers
    assert passed == {"present_segments": "past_segments",
                      **{f"present_memory.{i}.{f}": f"past_memory.{i}.{f}" for i in range(L) for f in "Mz"}}
    assert [v.name for v in inside.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in inside.graph.output] == ["logits"] + [f"present.{i}.{f}" for i in range(L)
                                                                  for f in ("key", "value")]
    assert not any(n.op_type == "If" for n in inside.graph.node)
    onnx.checker.check_model(inside)
    assert inside_model(inside) == (None, {})  # not a composed file: the session keeps the file's graph alone


def test_decode_graph_loads_on_the_first_decoding_call(files):
    sess = InfiniSession(files[23], provider="cpu")
    sess.feed(np.arange(N)[None] % CONFIG.vocab_size, outputs="none")  # one whole segment: the file's graph
    assert sess._engine._decode is None  # a stream of whole segments never loads it
    sess.feed(np.arange(1)[None], outputs="none")
    assert sess._engine._decode is not None and sess.decode_graph


def test_decode_graph_off_runs_one_session(files, tmp_path):
    sess = InfiniSession(files[17], provider="cpu", decode_graph=False, profile=str(tmp_path / "prof"))
    sess.feed(np.arange(3)[None] % CONFIG.vocab_size, outputs="none")
    events = json.loads(Path(sess.end_profiling()).read_text())
    assert not any(e.get("args", {}).get("graph") == "decode" for e in events)
    assert any(e.get("name") == "model_run" for e in events)

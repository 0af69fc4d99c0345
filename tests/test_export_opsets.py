"""Both exporters and both opsets: one I/O contract, the same results, calls of any length; the files also run in
ONNX's own ReferenceEvaluator and match ONNX Runtime (portable beyond ORT); ORT's Attention op with past inputs
is aligned bottom-right, as SPEC.md §5.2 needs."""
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from infini_attention.export import InfiniSession, export, preset_config, preset_params
from infini_attention.export.compose import all_nodes
from infini_attention.export.exporter import rounded_params
from infini_attention.export.io_check import check_io
from infini_attention.export.selfcheck import feed_split
from infini_attention.reference import lm_forward
from infini_attention.reference.tolerances import assert_close

VARIANTS = [("dynamo", 23), ("dynamo", 17), ("torchscript", 17)]
CONFIG = preset_config("tiny")
PARAMS = preset_params(CONFIG, seed=5)
N = CONFIG.attn.segment_len


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("opsets")
    return {v: export(CONFIG, PARAMS, d / f"{v[0]}-{v[1]}.onnx", exporter=v[0], opset=v[1]) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def test_one_contract_any_call_length(files, variant):
    result = files[variant]
    model = onnx.load(str(result.path))
    assert check_io(model, CONFIG) == []
    written = max(o.version for o in model.opset_import if o.domain == "")
    assert result.exporter == variant[0] and written == result.opset == max(variant[1], 18 * (variant[0] == "dynamo"))
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 45 * N + 5))
    split = [3, 5 * N + 2, 1, 1, N - 2, N, 35 * N + 1, 1, N - 1]  # inside, chunk, piece, chunk from a boundary ...
    split.append(ids.shape[1] - sum(split))
    sess = InfiniSession(result.path, provider="cpu")
    expected, states = lm_forward(CONFIG, rounded_params(PARAMS, "float32"), ids)
    assert_close("logits", feed_split(sess, ids, split), expected, "float32")
    got = sess.state()
    assert int(got["past_segments"]) == states[0].segments and sess.pending == ids.shape[1] % N
    for i, st in enumerate(states):
        assert_close(f"M{i}", got[f"past_memory.{i}.M"], st.M, "float32")


def test_attention_op_from_opset_23_only(files):
    ops = {v: Counter(n.op_type for n in all_nodes(onnx.load(str(r.path)).graph)) for v, r in files.items()}
    assert ops[("dynamo", 23)]["Attention"] > 0 and ops[("dynamo", 23)]["Softmax"] == 0
    assert ops[("dynamo", 17)]["Attention"] == 0 and ops[("dynamo", 17)]["Softmax"] > 0
    with_past = [n for n in all_nodes(onnx.load(str(files[("dynamo", 23)].path)).graph)
                 if n.op_type == "Attention" and len(n.input) >= 6 and n.input[4]]
    assert with_past and all(len(n.output) >= 3 and n.output[1] for n in with_past)  # ORT needs present_key


def test_any_call_is_one_onnx_call(files, monkeypatch):
    """A call of many segments is one ONNX call from a boundary (up to max_call_segments); cutting it
    differently changes nothing."""
    path = files[("dynamo", 23)].path
    ids = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (1, 20 * N + 3))
    one, cut = InfiniSession(path, provider="cpu"), InfiniSession(path, provider="cpu", max_call_segments=1)
    runs = []
    real = InfiniSession._run_piece
    monkeypatch.setattr(InfiniSession, "_run_piece", lambda self, p: runs.append(p.shape[1]) or real(self, p))
    one.feed(ids[:, :5])
    a = one.feed(ids[:, 5:])
    assert runs == [5, N - 5, 16 * N, 3 * N + 3]  # the pending segment completed first, then <= 16 segments
    runs.clear()
    cut.feed(ids[:, :5])
    b = cut.feed(ids[:, 5:])
    assert runs[1:] == [N - 5] + [N] * 19 + [3]
    assert_close("logits, cut vs one call", b, a, "float32")
    with pytest.raises(ValueError, match=r"max_call_segments: expected an integer >= 1, got 0"):
        InfiniSession(path, provider="cpu", max_call_segments=0)


@pytest.mark.parametrize("variant", [("dynamo", 23), ("dynamo", 17)], ids=lambda v: f"{v[0]}-{v[1]}")
def test_reference_evaluator_matches_ort(files, variant):
    """onnx.reference runs the file call by call (state carried) and agrees with ONNX Runtime."""
    path = files[variant].path
    ref, sess = ReferenceEvaluator(str(path)), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names_in = [i.name for i in sess.get_inputs()]
    state = {n: a for n, a in InfiniSession(path, provider="cpu", batch=2).state().items()}
    ids = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (2, 64))
    worst, start = 0.0, 0
    for t in (5, 1, 2, N, 20, 1, 3 * N - 1):  # inside, piece (5+1+2 = N), chunk ...
        feeds = {"input_ids": ids[:, start:start + t], **state}
        a, b = ref.run(None, feeds), sess.run(None, feeds)
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.dtype == y.dtype
            if x.size:
                worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y)) / (1 + np.max(np.abs(y)))))
        state = dict(zip(names_in[1:], b[1:]))
        start += t
    assert int(state["past_segments"]) == start // N
    assert worst < 1e-6, worst


@pytest.mark.parametrize("n", [0, 3])
def test_ort_attention_with_past_is_bottom_right(n):
    """The opset-23 Attention op, pending keys/values as past inputs, is_causal=1: query i sees keys 0 .. n + i
    (GQA 4 -> 2 heads, dk != dv), in ONNX Runtime and onnx.reference alike."""
    B, H, Hkv, t, dk, dv = 2, 4, 2, 3, 8, 6
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "prk", "prv"], is_causal=1, scale=0.3)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [vi("q", TensorProto.FLOAT, [B, H, t, dk]),
                                            vi("k", TensorProto.FLOAT, [B, Hkv, t, dk]),
                                            vi("v", TensorProto.FLOAT, [B, Hkv, t, dv]),
                                            vi("pk", TensorProto.FLOAT, [B, Hkv, None, dk]),
                                            vi("pv", TensorProto.FLOAT, [B, Hkv, None, dv])],
                              [vi(o, TensorProto.FLOAT, [B, None, None, None]) for o in ("y", "prk", "prv")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    r = np.random.default_rng(n)
    f = {"q": r.standard_normal((B, H, t, dk)), "k": r.standard_normal((B, Hkv, t, dk)),
         "v": r.standard_normal((B, Hkv, t, dv)), "pk": r.standard_normal((B, Hkv, n, dk)),
         "pv": r.standard_normal((B, Hkv, n, dv))}
    f = {k: a.astype(np.float32) for k, a in f.items()}
    keys = np.concatenate([f["pk"], f["k"]], 2).repeat(2, 1)
    values = np.concatenate([f["pv"], f["v"]], 2).repeat(2, 1)
    scores = np.where(np.arange(n + t)[None] <= np.arange(t)[:, None] + n, f["q"] @ keys.transpose(0, 1, 3, 2) * 0.3,
                      -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (w / w.sum(-1, keepdims=True)) @ values
    for got in (ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0],
                ReferenceEvaluator(model).run(None, f)[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

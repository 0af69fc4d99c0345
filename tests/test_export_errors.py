"""Clear errors before ONNX Runtime runs, failed exports leave no file, saves are atomic."""
from __future__ import annotations

import os

import numpy as np
import pytest

from infini_attention.export import ExportError, InfiniSession, export, preset_config, preset_params
from infini_attention.export import selfcheck as selfcheck_mod
from infini_attention.export import session as session_mod


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_exports):
    d = tiny_exports(tmp_path_factory.mktemp("err"))
    lm = preset_config("tiny")
    export(lm, preset_params(lm, 1), d / "lm_other_weights.onnx")
    other = lm.attn.replace(d_key=4)
    export(type(lm)(lm.vocab_size, lm.n_layers, lm.d_ff, other), preset_params(
        type(lm)(lm.vocab_size, lm.n_layers, lm.d_ff, other), 0), d / "lm_other_config.onnx")
    return d


def test_token_ids_out_of_range(models):
    sess = InfiniSession(models / "lm.onnx", provider="cpu")
    with pytest.raises(ValueError, match=r"input_ids: expected token ids in \[0, 64\) \(vocab_size\), got 64 at "
                                         r"\(row 0, position 2\)"):
        sess.feed(np.array([[1, 2, 64, 3]]))
    with pytest.raises(ValueError, match=r"expected token ids in \[0, 64\).*got -1"):
        sess.feed(np.array([[-1]]))
    with pytest.raises(ValueError, match=r"input_ids: expected an integer array of shape \(batch=1, T\), got float"):
        sess.feed(np.zeros((1, 3)))
    assert sess.position == 0  # nothing ran


def test_batch_mismatch_after_stream_started(models):
    sess = InfiniSession(models / "lm.onnx", provider="cpu")
    sess.feed(np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"input_ids: expected batch 1 \(the stream's; reset\(batch=\.\.\.\)"):
        sess.feed(np.zeros((2, 3), np.int64))


def test_chunk_of_wrong_width(models):
    sess = InfiniSession(models / "layer.onnx", provider="cpu")
    with pytest.raises(ValueError, match=r"x: expected a float array of shape \(batch=1, T, d_model=16\), got "
                                         r"float64 \(1, 5, 12\)"):
        sess.feed(np.zeros((1, 5, 12)))
    with pytest.raises(ValueError, match="x: expected finite values"):
        sess.feed(np.full((1, 2, 16), np.nan))


def test_state_of_wrong_shape_or_dtype(models):
    sess = InfiniSession(models / "lm.onnx", provider="cpu")
    sess.feed(np.arange(11))
    good = sess.state()
    bad = dict(good, **{"past_memory.1.M": good["past_memory.1.M"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"state 'past_memory.1.M': expected float32 \(1, 2, 8, 6\) for this model"
                                         r".*got float64 \(1, 2, 8, 6\)"):
        sess.set_state(bad)
    bad = dict(good, **{"past_memory.0.z": good["past_memory.0.z"][..., :4]})
    with pytest.raises(ValueError, match=r"state 'past_memory.0.z': expected float32 \(1, 2, 8\).*got float32 "
                                         r"\(1, 2, 4\)"):
        sess.set_state(bad)
    bad = dict(good, **{"past_key_values.0.key": np.zeros((1, 2, 8, 8), np.float32)})
    with pytest.raises(ValueError, match=r"with 0 <= n < segment_len=8, got \(1, 2, 8, 8\)"):
        sess.set_state(bad)
    bad = dict(good)
    del bad["past_key_values.1.value"]
    with pytest.raises(ValueError, match=r"missing \['past_key_values.1.value'\].*another model"):
        sess.set_state(bad)
    with pytest.raises(ValueError, match=r"'past_segments': expected an int64 scalar"):
        sess.set_state(dict(good, past_segments=np.array([1])))
    np.testing.assert_array_equal(sess.state()["past_memory.1.M"], good["past_memory.1.M"])  # unchanged


def test_state_file_from_another_model(models, tmp_path):
    a = InfiniSession(models / "lm.onnx", provider="cpu")
    a.feed(np.arange(20))
    a.save_state(tmp_path / "a.npz")
    same_config = InfiniSession(models / "lm_other_weights.onnx", provider="cpu")
    with pytest.raises(ValueError, match=r"saved from another model with the same config .*the weights differ"):
        same_config.load_state(tmp_path / "a.npz")
    other_config = InfiniSession(models / "lm_other_config.onnx", provider="cpu")
    with pytest.raises(ValueError, match=r"saved from another model \(config differs: attn.d_key 8 != 4\)"):
        other_config.load_state(tmp_path / "a.npz")
    with pytest.raises(FileNotFoundError, match="state file: expected a file written by save_state"):
        a.load_state(tmp_path / "missing.npz")


def test_interrupted_save_keeps_last_state(models, tmp_path, monkeypatch):
    sess = InfiniSession(models / "lm.onnx", provider="cpu")
    sess.feed(np.arange(10))
    path = sess.save_state(tmp_path / "s.npz")
    before = path.read_bytes()
    sess.feed(np.arange(7))

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if Ctrl-C hit in the middle of writing

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        sess.save_state(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.npz"]  # no temp file left behind


def test_failed_feed_leaves_state_unchanged(models, monkeypatch):
    sess = InfiniSession(models / "lm.onnx", provider="cpu", max_call_segments=1)  # a call per segment below
    sess.feed(np.arange(5))
    before, pos = sess.state(), sess.position
    calls = {"n": 0}
    real = sess._run_piece

    def fail_on_second(piece):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("ORT failed")
        return real(piece)

    monkeypatch.setattr(sess, "_run_piece", fail_on_second)
    with pytest.raises(RuntimeError, match="ORT failed"):
        sess.feed(np.arange(20))  # three pieces; the second fails
    assert sess.position == pos
    for name, arr in sess.state().items():
        np.testing.assert_array_equal(arr, before[name])


def _skewed_feed(monkeypatch, factor):
    """ONNX Runtime's outputs scaled by ``factor``: what a subtly wrong graph looks like to the self-check."""
    real = session_mod.InfiniSession.feed
    monkeypatch.setattr(session_mod.InfiniSession, "feed", lambda self, x, **kw: real(self, x, **kw) * factor)


def test_export_fails_loudly_on_mismatch(tmp_path, monkeypatch):
    config = preset_config("tiny", "layer")
    _skewed_feed(monkeypatch, 1.001)
    with pytest.raises(ExportError, match=r"export self-check failed: ONNX Runtime vs the reference: .*y: MISMATCH"
                                          r".*the float32 PyTorch implementation on the same inputs: 0\.\d+x"):
        export(config, preset_params(config), tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []  # nothing written


def test_bug_shared_with_torch_impl_is_not_rescued(tmp_path, monkeypatch):
    """ONNX Runtime and torch_impl equally far from the reference (what a bug in the primitives the
    graph shares with torch_impl looks like): the baseline is no excuse, the export fails."""
    config = preset_config("tiny", "layer")
    real = selfcheck_mod.model_forward
    monkeypatch.setattr(selfcheck_mod, "model_forward", lambda c, p, x: (real(c, p, x)[0] * 1.001, real(c, p, x)[1]))
    with pytest.raises(ExportError, match=r"y: MISMATCH .*the float32 PyTorch implementation on the same inputs: "
                                          r"\d+(\.\d+)?x tolerance"):
        export(config, preset_params(config), tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []


def test_trained_weights_conditioning_does_not_rescue_a_wrong_graph(tmp_path, monkeypatch):
    """The passkey delta checkpoint misses the float32 table (so does PyTorch float32 on the same
    inputs) and exports by the baseline criterion; the same weights with a 0.1% skew do not."""
    config, params = _passkey_checkpoint("delta")
    result = export(config, params, tmp_path / "delta.onnx")
    rescued = [line for line in result.checks if "MISMATCH" in line]
    assert rescued and all("of the float32 PyTorch implementation" in line for line in rescued)
    _skewed_feed(monkeypatch, 1.001)
    with pytest.raises(ExportError, match=r"logits: MISMATCH"):
        export(config, params, tmp_path / "skewed.onnx")
    assert sorted(os.listdir(tmp_path)) == ["delta.onnx"]


def _passkey_checkpoint(update):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    try:
        from examples.passkey.model import checkpoint_path, load_checkpoint
    finally:
        sys.path.remove(str(root))
    config, params, _ = load_checkpoint(checkpoint_path(update))
    return config, {k: np.asarray(v, np.float64) for k, v in params.items()}


def test_export_rejects_bad_params(tmp_path):
    config = preset_config("tiny", "layer")
    params = preset_params(config)
    with pytest.raises(ValueError, match=r"params\['wq'\]: expected a float array of shape \(16, 32\)"):
        export(config, dict(params, wq=params["wq"][:, :4]), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"missing \['beta'\]"):
        export(config, {k: v for k, v in params.items() if k != "beta"}, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"dtype: expected one of \['float16', 'float32'\], got 'bfloat16'"):
        export(config, params, tmp_path / "x.onnx", dtype="bfloat16")


def test_not_an_infini_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "id.onnx"))
    with pytest.raises(ValueError, match="expected an Infini-attention export"):
        InfiniSession(tmp_path / "id.onnx", provider="cpu")
    with pytest.raises(ValueError, match=r"provider: expected 'auto', 'cuda' or 'cpu', got 'tpu'"):
        InfiniSession(tmp_path / "id.onnx", provider="tpu")


def _rewritten(src, dst, *, meta=None, opset=None):
    import onnx

    model = onnx.load(str(src))
    for p in model.metadata_props:
        if meta and p.key in meta:
            p.value = meta[p.key]
    if opset is not None:
        for o in model.opset_import:
            if o.domain == "":
                o.version = opset
    onnx.save(model, str(dst))
    return dst


def test_model_of_an_older_format_says_reexport(models, tmp_path):
    from infini_attention.export import METADATA_KEYS

    old = _rewritten(models / "lm.onnx", tmp_path / "old.onnx",
                     meta={METADATA_KEYS["format"]: "infini-attention-onnx/1"})
    with pytest.raises(ValueError, match=r"expected format 'infini-attention-onnx/2', got 'infini-attention-onnx/1' "
                                         r"\(an older export: one segment piece per call .*re-export it"):
        InfiniSession(old, provider="cpu")


def test_opset_the_runtime_lacks(models, tmp_path):
    from infini_attention.export.checks import runtime_opset

    newer = _rewritten(models / "lm.onnx", tmp_path / "newer.onnx", opset=runtime_opset() + 1)
    with pytest.raises(ValueError, match=rf"opset: expected at most {runtime_opset()} \(the newest this onnxruntime "
                                         rf".* runs\), got {runtime_opset() + 1}; re-export with --opset 17"):
        InfiniSession(newer, provider="cpu")


def test_state_from_another_file_is_refused(models):
    """A state of the other-config model (d_key 4) given to this one: refused before ORT runs, naming the array."""
    other = InfiniSession(models / "lm_other_config.onnx", provider="cpu")
    other.feed(np.arange(3))
    sess = InfiniSession(models / "lm.onnx", provider="cpu")
    with pytest.raises(ValueError, match=r"state 'past_key_values.0.key': expected float32 \(1, 2, 3, 8\) for this "
                                         r"model .*got float32 \(1, 2, 3, 4\)"):
        sess.set_state(other.state())
    assert sess.position == 0


def test_exporter_failure_names_the_exporter(tmp_path, monkeypatch):
    from infini_attention.export import exporter as exporter_mod

    config = preset_config("tiny", "layer")

    def broken(*a, **k):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(exporter_mod, "trace", broken)
    monkeypatch.setattr(exporter_mod, "_TRACED", {})
    for name, hint in (("dynamo", "try --exporter torchscript --opset 17"), ("torchscript", "try --exporter dynamo")):
        with pytest.raises(ExportError, match=rf"exporter '{name}' \(opset 17\) could not export the layer's inside "
                                              rf"form: RuntimeError: cannot trace this; {hint}"):
            export(config, preset_params(config), tmp_path / "x.onnx", exporter=name, opset=17)
    assert os.listdir(tmp_path) == []


def test_export_option_errors(tmp_path, capsys):
    from infini_attention.reference.cli import main

    config = preset_config("tiny", "layer")
    with pytest.raises(ValueError, match=r"opset: expected at most 20 with exporter 'torchscript' .*got 23"):
        export(config, preset_params(config), tmp_path / "x.onnx", exporter="torchscript", opset=23)
    with pytest.raises(ValueError, match=r"opset: expected an integer in \[17, \d+\] .*got 11"):
        export(config, preset_params(config), tmp_path / "x.onnx", opset=11)
    with pytest.raises(ValueError, match=r"exporter: expected one of \['dynamo', 'torchscript'\], got 'jit'"):
        export(config, preset_params(config), tmp_path / "x.onnx", exporter="jit")
    assert main(["export", "--exporter", "torchscript", "--opset", "23", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "--opset: expected at most 20 with exporter 'torchscript'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_empty_chunk_returns_empty_without_running_the_graph(models, monkeypatch):
    """issue 10's bad-input row 'a chunk that is empty': a (B, 0) call is valid and gives (B, 0, V) with the state
    untouched, without reaching ONNX Runtime; an empty array of the wrong kind is refused naming the argument."""
    sess = InfiniSession(models / "lm.onnx", provider="cpu")
    sess.feed(np.arange(5))
    before, position = sess.state(), sess.position

    def no_run(*_, **__):
        raise AssertionError("ONNX Runtime ran for an empty call")

    monkeypatch.setattr(sess._engine, "run", no_run)
    out = sess.feed(np.zeros((1, 0), np.int64))
    assert out.shape == (1, 0, sess.config.vocab_size) and sess.feed(np.zeros((1, 0), np.int64), outputs="last") is None
    assert sess.position == position and all(np.array_equal(before[k], v) for k, v in sess.state().items())
    with pytest.raises(ValueError, match=r"input_ids: expected an integer array of shape \(batch=1, T\), got float64"):
        sess.feed(np.array([]))
    layer = InfiniSession(models / "layer.onnx", provider="cpu")
    monkeypatch.setattr(layer._engine, "run", no_run)
    assert layer.feed(np.zeros((1, 0, layer.attn.d_model), np.float32)).shape == (1, 0, layer.attn.d_model)

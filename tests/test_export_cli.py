"""`infini export`, `infini stream` and `infini demo` end to end (small sizes)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from infini_attention.export import InfiniSession, preset_config
from infini_attention.export.checkpoint import save_checkpoint
from infini_attention.reference.cli import main


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    assert main(["export", "--preset", "tiny", "-o", str(path)]) == 0
    return path


def test_export_preset_prints_checks(tiny_onnx, capsys, tmp_path):
    assert main(["export", "--preset", "tiny", "--kind", "layer", "-o", str(tmp_path / "l.onnx"), "--show-io"]) == 0
    out = capsys.readouterr().out
    assert "exported layer ->" in out and "self-check: 10 comparisons against the reference passed" in out
    assert "| `past_memory.0.M` | in | (batch, 2, 8, 6) | float32 |" in out


def test_export_from_pytorch_checkpoint(tmp_path, capsys):
    import torch

    from infini_attention.torch_impl import InfiniTransformerLM

    config = preset_config("tiny")
    model = InfiniTransformerLM(config, dtype=torch.float32)
    ckpt = save_checkpoint(tmp_path / "m.pt", config, model)
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.onnx")]) == 0
    sess = InfiniSession(tmp_path / "m.onnx", provider="cpu")
    ids = np.arange(20)[None] % config.vocab_size
    with torch.no_grad():
        expected, _ = model(torch.as_tensor(ids))
    from infini_attention.reference.tolerances import assert_close

    assert_close("logits", sess.feed(ids), expected.numpy(), "float32")


def test_stream_generated_save_and_resume(tiny_onnx, tmp_path, capsys):
    state, report = tmp_path / "state.npz", tmp_path / "r.json"
    args = ["stream", str(tiny_onnx), "--generate", "5000", "--provider", "cpu", "--no-progress",
            "--checkpoint-every", "1024", "--save-state", str(state)]
    assert main(args + ["--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "streamed 5,000 tokens" in out and "tokens/s" in out and "peak memory" in out and "state 9" in out
    data = json.loads(report.read_text())
    assert data["position"] == 5000 and [c["position"] for c in data["checkpoints"]][-1] == 5000
    one_go = InfiniSession(tiny_onnx, provider="cpu")
    one_go.load_state(state)
    # the same stream in two runs: 3000 tokens, then resume for 2000 more (--generate T: T more tokens)
    assert main(args[:3] + ["3000"] + args[4:]) == 0
    assert main(args[:3] + ["2000"] + args[4:] + ["--resume", str(state)]) == 0
    out = capsys.readouterr().out
    assert "resumed at token 3,000" in out and "streamed 2,000 tokens (to position 5,000)" in out
    resumed = InfiniSession(tiny_onnx, provider="cpu")
    resumed.load_state(state)
    for name, arr in resumed.state().items():
        np.testing.assert_array_equal(arr, one_go.state()[name], err_msg=name)


def test_stream_token_file_failure_keeps_saved_state(tiny_onnx, tmp_path, capsys):
    ids = np.random.default_rng(0).integers(0, 64, 3000)
    ids[2500] = 99  # out of range: the stream stops there
    np.save(tmp_path / "ids.npy", ids)
    state = tmp_path / "s.npz"
    code = main(["stream", str(tiny_onnx), "--tokens", str(tmp_path / "ids.npy"), "--no-progress",
                 "--checkpoint-every", "1000", "--save-state", str(state), "--provider", "cpu"])
    assert code == 2
    assert "expected token ids in [0, 64) (vocab_size), got 99" in capsys.readouterr().err
    sess = InfiniSession(tiny_onnx, provider="cpu")
    sess.load_state(state)
    assert sess.position == 2000  # the last checkpoint before the bad token


def test_stream_then_generate_and_text_tokens(tiny_onnx, tmp_path, capsys):
    (tmp_path / "ids.txt").write_text(" ".join(map(str, range(40))))
    assert main(["stream", str(tiny_onnx), "--tokens", str(tmp_path / "ids.txt"), "--no-progress",
                 "--then-generate", "5", "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "streamed 40 tokens" in out and len(out.split("generated:")[1].split()) == 5


def test_demo_small_run(tmp_path, capsys):
    assert main(["demo", "--preset", "tiny", "--tokens", "3000", "--verify-every", "1024", "--out-dir",
                 str(tmp_path), "--no-progress", "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "[4/4] results" in out and "4 checkpoints verified against PyTorch" in out
    assert "MISMATCH" not in out


def test_demo_passkey_main_job(tmp_path, capsys):
    """The README's main job on the committed passkey weights, at a short length: the whole
    pipeline (PyTorch vs reference, export, ORT stream verified against PyTorch) and a correct
    answer from memory (the passkey is 30+ segments before the question)."""
    code = main(["demo", "--length", "2048", "--depth", "0.25", "--verify-every", "1024", "--tokens", "0",
                 "--out-dir", str(tmp_path), "--no-progress", "--provider", "cpu"])
    out = capsys.readouterr().out
    assert "PyTorch vs the reference on these weights: PyTorch float64 vs reference: logits: ok" in out
    assert "MISMATCH" not in out and "exporter self-check passed" in out
    # PyTorch follows the document on its own state: at tokens 0, 1024 and 2048 the logits of the next tokens and
    # both memories are compared, at the end (2049) the memories; the float64 drift is reported beside them
    assert len(re.findall(r"ORT vs PyTorch \(tokens [\d,]+\.\.[\d,]+\): logits \S+x, M \S+x, z \S+x the float32 "
                          r"tolerance.*: ok", out)) == 3, out
    assert re.search(r"ORT vs PyTorch \(at 2,049\): M \S+x, z \S+x the float32 tolerance \(M, z vs float64", out), out
    assert "PyTorch, which read the whole document on its own state" in out and "answered" in out
    assert "model answered" in out and "CORRECT" in out and code == 0, out

"""Seconds-long smoke test of the passkey task (issue 5): the generator, a tiny training run
(the loss goes down), checkpoint -> ONNX export -> ONNX Runtime streaming evaluation -> demo (with
its independent PyTorch verification) -> plots, end to end; and the committed weights, shipped as
package data, still retrieve the passkey (PyTorch, short prompt).

The task, the checkpoints and the demo are `infini_attention.export.passkey`; training, evaluation
and plots are the example (examples/passkey/). The real training (minutes) and evaluation (up to
1M tokens) are not CI: see examples/passkey/README.md. CI also runs `infini demo --quick` from an
installed wheel (.ci/run).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `examples.passkey`

torch = pytest.importorskip("torch")
from infini_attention.export.passkey import data  # noqa: E402
from infini_attention.export.passkey.model import (checkpoint_path, gate_values, load_checkpoint,  # noqa: E402
                                                   memory_off, save_checkpoint, state_bytes)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ generator

@pytest.mark.parametrize("depth", [0.0, 0.37, 0.5, 1.0])
@pytest.mark.parametrize("filler", ["repeat", "random"])
def test_generator_layout(depth, filler):
    doc = data.PasskeyDoc(200, depth, (7, 1, 4, 3, 2), phase=5, filler=filler)
    toks = doc.prompt()
    assert toks.shape == (200,) and toks.dtype == np.int64
    assert toks[0] == data.BOS and toks[-1] == data.QUESTION
    kp = doc.key_pos
    copy = [data.KEY, 7, 1, 4, 3, 2, data.DOT]
    assert toks[kp:kp + 14].tolist() == copy + copy  # said twice, like the paper's passkey
    assert (toks == data.KEY).sum() == 2 and (toks == data.QUESTION).sum() == 1
    assert (toks < 10).sum() == 10  # the only digits are the passkey's
    assert abs(kp - 1 - depth * (200 - data.MIN_LENGTH)) <= 0.5
    assert doc.distance == 199 - (kp + 13)
    # chunked generation is the same document, whatever the chunking
    for step in (1, 7, 64):
        assert np.array_equal(np.concatenate([doc.chunk(i, i + step) for i in range(0, 200, step)]), toks)


def test_generator_repeat_filler_is_the_paper_text():
    doc = data.PasskeyDoc(100, 1.0, (0, 0, 0, 0, 0), phase=0)
    text = data.decode(doc.prompt()[1:49])
    assert text == " ".join(data.FILLER_TEXT * 2)


def test_prompt_length_puts_the_question_where_asked():
    assert data.prompt_length(2048, 32) == 2049  # the question opens segment 64
    assert data.prompt_length(2040, 32) == 2049  # padded with filler to the boundary
    assert data.prompt_length(2048, 32, 5) == 2054
    assert data.prompt_length(2048, 32, None) == 2049
    doc = data.PasskeyDoc(data.prompt_length(100, 8), 0.5, (1, 2, 3, 4, 5))
    assert doc.question_pos % 8 == 0
    with pytest.raises(ValueError, match="question_offset"):
        data.prompt_length(100, 8, 8)


def test_generator_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        data.PasskeyDoc(15, 0.5, (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="depth"):
        data.PasskeyDoc(100, 1.5, (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="passkey"):
        data.PasskeyDoc(100, 0.5, (1, 2, 3))


def test_training_batch_targets():
    rng = np.random.default_rng(0)
    tok, tgt, mask, docs = data.training_batch(rng, 3, 50)
    assert tok.shape == (3, 55) and mask.sum() == 15
    assert np.array_equal(tgt[mask].reshape(3, 5), np.stack([d.answer for d in docs]))
    assert (tok[:, 49] == data.QUESTION).all()


# ------------------------------------------------------------------------------ end to end

TINY = ["--steps", "40", "--batch", "8", "--segment-len", "8", "--d-model", "32", "--n-heads", "2",
        "--n-layers", "2", "--d-ff", "64", "--min-len", "20", "--start-len", "24", "--max-len", "40",
        "--lr", "3e-3", "--eval-len", "0", "--log-every", "20", "--threads", "1", "--no-progress", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from examples.passkey import train

    tmp = tmp_path_factory.mktemp("passkey")
    ckpt, log = tmp / "tiny.safetensors", tmp / "tiny_train_log.json"
    assert train.main(TINY + ["--out", str(ckpt), "--log", str(log)]) == 0
    return tmp, ckpt, log


def test_tiny_training_loss_decreases(tiny_run):
    _, _, log = tiny_run
    losses = json.loads(log.read_text())["losses"]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


def test_checkpoint_roundtrip_and_control(tiny_run, tmp_path):
    _, ckpt, _ = tiny_run
    config, params, meta = load_checkpoint(ckpt)
    assert config.attn.segment_len == 8 and meta["train_length"] == 40
    assert all(v.dtype == np.float32 for v in params.values())
    off = memory_off(params)
    assert (gate_values(off, config) < 1e-12).all() and gate_values(params, config).shape == (2, 2)
    again = save_checkpoint(tmp_path / "again.npz", config, params)  # written as safetensors whatever the suffix
    assert again.name == "again.safetensors" and again.read_bytes()[8:9] == b"{"
    assert all(np.array_equal(params[k], v) for k, v in load_checkpoint(again)[1].items())
    legacy = {**params, "__config__": np.array(json.dumps(config.to_dict()))}  # the format of earlier versions
    np.savez_compressed(tmp_path / "old.npz", **legacy)
    old_config, old_params, _ = load_checkpoint(tmp_path / "old.npz")
    assert old_config == config and all(np.array_equal(params[k], v) and v.dtype == np.float32
                                        for k, v in old_params.items())
    assert state_bytes(config) == 2 * 2 * 16 * 17 * 4


@pytest.fixture(scope="module")
def tiny_onnx(tiny_run):
    """The tiny model exported once (an export takes seconds): (config, params, .onnx path)."""
    pytest.importorskip("onnxruntime")
    from examples.passkey import evaluate

    tmp, ckpt, _ = tiny_run
    config, params, _ = load_checkpoint(ckpt)
    return config, params, evaluate.export_onnx(ckpt, control=False, out_dir=tmp)


def test_pipeline_onnx_evaluate_demo_plots(tiny_run, tiny_onnx, tmp_path):
    from examples.passkey import demo, evaluate, plots, report

    _, ckpt, _ = tiny_run
    onnx_path = tiny_onnx[2]
    sess = evaluate.open_session(onnx_path, batch=3, threads=1)
    cell = evaluate.evaluate_cell(sess, 40, 0.5, 3, seed=0)
    assert cell["samples"] == 3 and 0.0 <= cell["accuracy"] <= 1.0 and not cell["in_last_segment"]
    # the ONNX stream agrees with the PyTorch model on the same documents (greedy answers)
    from infini_attention.torch_impl import InfiniTransformerLM

    config, params, _ = load_checkpoint(ckpt)
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval()
    docs = data.make_docs(np.random.default_rng(3), 2, 45, 0.2)
    want, _ = model.generate(torch.from_numpy(np.stack([d.prompt() for d in docs])), data.N_DIGITS)
    got = evaluate.stream_docs(evaluate.open_session(onnx_path, batch=2, threads=1), docs)
    assert np.array_equal(got, want[:, -data.N_DIGITS:].numpy())

    # verified as `infini demo` runs it (PyTorch reads the same document on its own state in a second
    # process); the memory-off control is streamed without verification
    lines = []
    r = demo.run_demo(length=100, depth=0.25, checkpoint=ckpt, control=True, progress=False, threads=1,
                      verify_every=32, echo=lines.append)
    assert r["length"] == 100 and len(r["answer"]) == 5 and "control_answer" in r
    text = "\n".join(lines)
    assert "passkey" in text and "bytes" in text and "tokens after the passkey" in text
    assert r["verified_ok"] and r["torch_answer"] == r["answer"]
    assert [p for p, _ in r["drift"]] == [0, 32, 64, 96, 105]  # token 0, every 32, the end (prompt 105)
    assert all(set(s) == {"logits", "M", "z"} for p, s in r["drift"][1:-1]) and set(r["drift"][-1][1]) == {"M", "z"}
    text = "\n".join(lines)
    assert "drift, ORT vs PyTorch" in text and "against float64 sums" in text and "MISMATCH" not in text

    results = {"models": {"delta": {"command": "test", "seed": 0, "machine": "test", "memory_off_beta": -30.0,
                                    "checkpoint": "x", "train_length": 32, "state_bytes": 1,
                                    "cells": [dict(cell, depth_name="middle", memory="on")]}}}
    (tmp_path / "eval_delta.json").write_text(json.dumps(results))
    assert "| on | middle |" in report.markdown(report.load_results(tmp_path))
    png = plots.plot_accuracy(tmp_path, tmp_path / "acc.png")
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_committed_weights_retrieve_the_passkey(update):
    """The committed checkpoints answer (PyTorch, teacher-forced, passkey 2+ segments back)."""
    from infini_attention.torch_impl import InfiniTransformerLM

    path = checkpoint_path(update)
    if not path.is_file():
        pytest.skip(f"{path} not committed")
    assert path.suffix == ".safetensors" and path.read_bytes()[8:9] == b"{"  # safetensors, config in its metadata
    config, params, _ = load_checkpoint(path)
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval()
    N = config.attn.segment_len
    rng = np.random.default_rng(0)
    for depth, mem_ok in ((0.0, True), (0.3, True)):
        tok, tgt, mask, docs = data.training_batch(rng, 16, 4 * N + 5, np.full(16, depth))
        assert all(d.question_pos // N - d.key_pos // N >= 2 for d in docs)
        for p, want_hi in ((params, True), (memory_off(params), False)):
            m = model if want_hi else InfiniTransformerLM.from_numpy(config, p, dtype=torch.float32).eval()
            with torch.no_grad():
                logits, _ = m(torch.from_numpy(tok))
            acc = (logits.argmax(-1).numpy() == tgt)[mask].reshape(16, 5).all(1).mean()
            assert (acc >= 0.9) if want_hi else (acc <= 0.2), (update, depth, want_hi, acc)


# ------------------------------------------------------------------------------ the demo's verification

def _tiny_stream(tiny_onnx, tokens=512):
    """The ORT session and stream source, and the follower's own copy of the input."""
    from types import SimpleNamespace

    from infini_attention.export import InfiniSession
    from infini_attention.export.stream import Source

    config, params, path = tiny_onnx
    sess = InfiniSession(path, provider="cpu", intra_op_threads=1)
    inputs = Source(SimpleNamespace(kind="lm", config=config, attn=config.attn, batch=1), tokens)
    return config, params, sess, Source(sess, tokens), inputs


@pytest.mark.parametrize("skew", [0.0, 1e-3])
def test_verification_is_independent_and_can_fail(tiny_onnx, skew):
    """PyTorch follows the stream on its own state: fed weights 0.1% off in one key projection, its
    memory parts from ORT's and the check says MISMATCH (ORT's state is never copied into it)."""
    from infini_attention.export.verify import TorchFollower, checkpoint_positions, drift_line, follow_stream

    config, params, sess, source, inputs = _tiny_stream(tiny_onnx)
    theirs = dict(params, **{"layers.0.attn.wk": params["layers.0.attn.wk"] * (1 + skew)})
    with TorchFollower(config, theirs, inputs, checkpoint_positions(512, 128)) as follower:
        checks, report = follow_stream(sess, follower, source, 128, progress=False)
    assert [c.position for c in checks] == [0, 128, 256, 384, 512] and report.tokens == 512
    assert sess.position == 512  # the lookahead of each check was rolled back
    if skew:
        assert not checks[-1].ok and "MISMATCH" in checks[-1].line() and "layer 0 M" in checks[-1].line()
    else:
        assert all(c.ok for c in checks), [c.line() for c in checks]
        assert max(max(c.scores.values()) for c in checks[1:]) < 0.5
        assert "logits" in drift_line(checks) and "at 128 ->" in drift_line(checks)


def test_follower_failures_are_errors_not_hangs(tiny_onnx, monkeypatch):
    from types import SimpleNamespace

    from infini_attention.export import verify
    from infini_attention.export.stream import Source

    config, params, sess, source, inputs = _tiny_stream(tiny_onnx, 64)
    bad = Source(SimpleNamespace(kind="lm", config=None, attn=config.attn, batch=1), 64)  # reading fails in the child
    with verify.TorchFollower(config, params, bad, [0, 32, 64]) as follower:
        with pytest.raises(RuntimeError, match="(?s)PyTorch process failed.*AttributeError"):
            follower.record(0)
    with verify.TorchFollower(config, params, inputs, [0, 64]) as follower:
        follower._proc.kill()
        with pytest.raises(RuntimeError, match=r"PyTorch process stopped \(exit code -9\) before token 0"):
            follower.record(0)
    with verify.TorchFollower(config, params, inputs, [0, 64]) as follower:
        with pytest.raises(RuntimeError, match="PyTorch sent token 0, expected 32"):
            follower.record(32)
    monkeypatch.setattr(verify, "RECORD_TIMEOUT", 0.2)  # the child needs longer than that to import torch
    with verify.TorchFollower(config, params, inputs, [0, 64]) as follower:
        with pytest.raises(RuntimeError, match="no word from the PyTorch process for 0.2 s"):
            follower.record(0)


def test_the_package_needs_no_checkout():
    """No package module imports examples/ or edits sys.path: an installed wheel has no examples/."""
    offenders = []
    for folder in ("reference", "torch_impl", "export", "conformance"):
        for path in (REPO / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if "sys.path" in code or code.lstrip().startswith(("import examples", "from examples")):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders
    assert (checkpoint_path("linear").parent / "passkey_linear.json").is_file()
    assert checkpoint_path("linear").is_relative_to(REPO / "export" / "passkey")


def test_evaluation_answers_do_not_depend_on_jobs(tiny_run, tmp_path):
    """evaluate.py --jobs J streams fixed batches of PIECE documents in J processes: every cell's
    answers are those of the one-process run (a cell of 10 documents is 2 batches)."""
    pytest.importorskip("onnxruntime")
    from examples.passkey import evaluate

    _, ckpt, _ = tiny_run
    common = ["--checkpoint", str(ckpt), "--lengths", "40,64", "--samples", "10", "--offsets", "0,7",
              "--onnx-dir", str(tmp_path / "onnx"), "--no-progress"]
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert evaluate.main(common + ["--jobs", str(jobs), "--out-dir", str(out)]) == 0
        (entry,) = json.loads(next(out.glob("eval_*.json")).read_text())["models"].values()
        runs[jobs] = entry
    keep = ("length", "depth_name", "memory", "samples", "correct", "digit_accuracy", "examples", "question_offset")
    for group in ("cells", "alignment"):
        one, two = ([{k: c.get(k) for k in keep} for c in runs[j][group]] for j in (1, 2))
        assert len(one) == (12 if group == "cells" else 2) and one == two, group


def test_dilution_ramp_and_tiled_filler_memory():
    from examples.passkey import train

    args = train.parse_args(["--update", "linear", "--steps", "1000", "--warm-frac", "0.3", "--dilute-ramp", "0.4",
                             "--dilute-start", "1e4", "--dilute-max", "1e8"])
    caps = [train.dilute_max(s, args) for s in (0, 300, 500, 700, 999)]
    assert caps[0] == caps[1] == pytest.approx(1e4) and caps[3] == caps[4] == pytest.approx(1e8)
    assert caps[2] == pytest.approx(1e6)  # log-linear: half way through the ramp
    assert train.dilute_max(500, train.parse_args(["--dilute-max", "5e6"])) == 5e6  # no ramp: the cap throughout
    config = train.default_config("linear", 8, 32, 2, 2, 64)
    model = train.build_model(config, 0)
    full = train.filler_memory(model, np.random.default_rng(0), 6, 40)
    tiled = train.filler_memory(model, np.random.default_rng(0), 6, 40, rows=4)
    for (fm, fz), (tm, tz) in zip(full, tiled):
        assert tm.shape == fm.shape and tz.shape == fz.shape
        assert torch.equal(tm[4:], tm[:2]) and torch.equal(tz[4:], tz[:2])  # rows 4, 5 repeat phases 0, 1


def test_training_refuses_a_log_over_the_checkpoint_sidecar(tmp_path, capsys):
    from examples.passkey import train

    assert train.main(["--out", str(tmp_path / "m.safetensors"), "--log", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("--log: expected") and "m.json" in err[0]
    assert not list(tmp_path.iterdir())  # refused before training: nothing written

"""Issue 13's table of bad inputs and faults: one row per case, with the exit status and the message.

Every usage error is ONE line on stderr naming the option or file, what was expected and what came
(exit 2), found before any token is streamed or any property run; nothing checked is exit 3; the
error policy of `reference/cli.py` (exit 1 / 2 / 130 / 141, --debug) is tested on its own rows.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from infini_attention.export import InfiniSession, preset_config
from infini_attention.reference import cli as ref_cli
from infini_attention.reference.cli import main

REF = "infini_attention.conformance.adapters.reference:make"
GEN = ["--generate", "100", "--no-progress", "--provider", "cpu"]
S = ["stream", "{d}/lm.onnx", *GEN]  # a good stream command the rows add one bad option to


# Models `infini export --module {d}/user_models.py:NAME` builds: one that follows the streaming protocol
# (torch_impl/protocol.py) and one per way of not following it.
USER_MODELS = """
import torch
import torch.nn as nn
from infini_attention.reference import InfiniConfig
from infini_attention.torch_impl import InfiniAttention

A = InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=4, segment_len=4)


class Good(nn.Module):
    vocab_size = 11

    def __init__(self, vocab=11, layers=(A, A), twice=False, swap="", returns="both"):
        super().__init__()
        self.vocab_size, self.twice, self.swap, self.returns = vocab, twice, swap, returns
        self.embed = nn.Embedding(vocab, 8)
        self.attn = nn.ModuleList(InfiniAttention(c) for c in layers)

    def forward(self, ids, states=None):
        states = list(states or [None] * len(self.attn))
        x, new = self.embed(ids), []
        for i in range(len(self.attn)):
            a, s = self.attn[i](x, states[-1 - i] if self.swap == "given" else states[i])
            if self.twice:
                a, s = self.attn[i](x + a, s)
            x, new = x + a, ([s] + new if self.swap == "returned" else new + [s])
        return x @ self.embed.weight.T if self.returns == "outputs" else (x @ self.embed.weight.T, new)


class OneArg(Good):
    def forward(self, ids):
        return super().forward(ids, None)


class NoDeclaration(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = InfiniAttention(A)

    def forward(self, x, states=None):
        return x, states


def build_good():
    return Good()


def other_vocab():
    return Good(vocab=13)


def no_infini():
    m = nn.Linear(4, 4)
    m.vocab_size = 4
    return m


def no_declaration():
    return NoDeclaration()


def one_arg():
    return OneArg()


def returns_outputs_only():
    return Good(returns="outputs")


def given_swapped():
    return Good(swap="given")


def returned_swapped():
    return Good(swap="returned")


def layer_called_twice():
    return Good(twice=True)


def two_segment_lengths():
    return Good(layers=(A, A.replace(segment_len=8)))


def raises():
    raise RuntimeError("no weights here")


def returns_int():
    return 3


NOT_CALLABLE = 7
"""


def _user_files(d) -> None:
    """user_models.py and safetensors files for it: good, of another vocab, missing/extra tensors, corrupt."""
    from safetensors.torch import save_file, save_model

    from infini_attention.export.module import build_model

    (d / "user_models.py").write_text(USER_MODELS)
    good = build_model(f"{d}/user_models.py:build_good")
    save_model(good, str(d / "good.safetensors"))
    save_model(build_model(f"{d}/user_models.py:other_vocab"), str(d / "vocab13.safetensors"))
    tensors = {k: v.contiguous() for k, v in good.state_dict().items()}
    save_file({k: v for k, v in tensors.items() if k != "attn.1.wo"}, str(d / "missing.safetensors"))
    save_file({**tensors, "head.bias": torch.zeros(3)}, str(d / "extra.safetensors"))
    raw = (d / "good.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[:len(raw) // 2])
    (d / "junk.safetensors").write_bytes(b"not safetensors at all")


def _edit(src, dst, meta=None, **arrays):
    """A copy of the state file ``src`` with ``meta`` fields and named arrays replaced."""
    with np.load(src) as npz:
        data = {k: npz[k] for k in npz.files}
    data["__meta__"] = np.array(json.dumps({**json.loads(str(data["__meta__"])), **(meta or {})}))
    data.update({k.replace("__", "."): v for k, v in arrays.items()})
    np.savez(dst, **data)


@pytest.fixture(scope="module")
def f(tmp_path_factory, tiny_exports):
    """Paths the rows refer to: models, a good state of 1000 tokens and broken variants of it."""
    d = tiny_exports(tmp_path_factory.mktemp("bad"))
    lm = preset_config("tiny")
    sess = InfiniSession(d / "lm.onnx", provider="cpu")
    sess.feed(np.random.default_rng(0).integers(0, lm.vocab_size, (1, 1000)))
    sess.save_state(d / "s1000.npz")
    good, raw = sess.state(), (d / "s1000.npz").read_bytes()
    for name, data in {"junk.onnx": b"not a model", "empty.onnx": b"", "junk.pt": b"not a checkpoint", "afile": b"x",
                       "empty.npz": b"", "text.npz": b"hello", "truncated.npz": raw[:len(raw) // 2], "ro.npz": b""}.items():
        (d / name).write_bytes(data)
    os.chmod(d / "ro.npz", 0o444)
    at = raw.find(good["past_memory.0.M"].tobytes())  # a bit flipped inside M's data: the zip CRC sees it
    (d / "flipped.npz").write_bytes(raw[:at + 5] + bytes([raw[at + 5] ^ 0x10]) + raw[at + 6:])
    np.save(d / "single.npy", np.zeros(3))
    os.replace(d / "single.npy", d / "single.npz")
    _edit(d / "s1000.npz", d / "pos5.npz", {"position": 5})
    _edit(d / "s1000.npz", d / "batch2.npz", {"batch": 2})
    _edit(d / "s1000.npz", d / "format9.npz", {"format": "infini-attention-state/9"})
    _edit(d / "s1000.npz", d / "negz.npz", past_memory__0__z=-good["past_memory.0.z"])
    _edit(d / "s1000.npz", d / "infz.npz", past_memory__1__z=np.full_like(good["past_memory.1.z"], np.inf))
    _edit(d / "s1000.npz", d / "nanM.npz", past_memory__0__M=np.full_like(good["past_memory.0.M"], np.nan))
    _edit(d / "s1000.npz", d / "seg0.npz", {"position": 0}, past_segments=np.array(0, np.int64))
    np.save(d / "ids.npy", np.arange(500) % 64)
    _user_files(d)
    return d


U = "{d}/user_models.py"
# `infini export --module`: (row id, --module, more options, fragment); each refused before anything is traced
MODULE_ROWS = [
    ("without a colon", "user_models", [], "--module: expected MODULE:ATTRIBUTE (e.g. my_pkg.models:build), got "
                                          "'user_models'"),
    ("module missing", "no_such_pkg.models:build", [], "--module 'no_such_pkg.models:build': expected an importable "
                                                       "module, cannot import 'no_such_pkg.models' (No module named"),
    ("file missing", "{d}/nope.py:build", [], "cannot import '{d}/nope.py' (no such file"),
    ("attribute missing", f"{U}:nope", [], "expected '{d}/user_models.py' to define 'nope', it has no attribute 'nope'"),
    ("not callable", f"{U}:NOT_CALLABLE", [], "expected a callable returning the model (or the model), got int"),
    ("builder raises", f"{U}:raises", [], "raises() raised RuntimeError: no weights here"),
    ("builder returns an int", f"{U}:returns_int", [], "expected returns_int() to return a torch.nn.Module, got int"),
    ("no InfiniAttention", f"{U}:no_infini", [], "model {d}/user_models.py:no_infini: expected at least one "
                                                "torch_impl.InfiniAttention among its modules, found none"),
    ("no input declared", f"{U}:no_declaration", [], "expected one attribute declaring its input, vocab_size (token "
                                                    "ids) or d_input (vectors), got neither"),
    ("forward without states", f"{U}:one_arg", [], "forward: expected forward(inputs, states) -> (outputs, states), "
                                                  "its signature (ids) does not take two arguments"),
    ("forward returns outputs only", f"{U}:returns_outputs_only", [],
     "forward: expected to return (outputs, states), got a Tensor"),
    ("states handed in the wrong order", f"{U}:given_swapped", [], "InfiniAttention 'attn.0' (layer 0): expected to "
                                                                  "be given states[0] (states are in module order)"),
    ("states returned in the wrong order", f"{U}:returned_swapped", [], "forward: returned states[0]: expected the "
     "state InfiniAttention 'attn.0' returned (states are in module order), got the state of InfiniAttention 'attn.1'"),
    ("a layer called twice", f"{U}:layer_called_twice", [], "InfiniAttention 'attn.0' (layer 0): expected one call "
                                                           "per forward (one state per layer), got 2"),
    ("two segment lengths", f"{U}:two_segment_lengths", [], "expected one segment_len for all its InfiniAttention "
                                                           "layers (a stream is cut into segments of one length), "
                                                           "got [4, 8]"),
    ("checkpoint of another shape", f"{U}:build_good", ["--checkpoint", "{d}/vocab13.safetensors"],
     "--checkpoint '{d}/vocab13.safetensors': tensor 'embed.weight': expected shape (11, 8), got (13, 8)"),
    ("checkpoint missing a tensor", f"{U}:build_good", ["--checkpoint", "{d}/missing.safetensors"],
     "expected the model's 11 state_dict tensors, missing ['attn.1.wo'], unexpected []"),
    ("checkpoint with an extra tensor", f"{U}:build_good", ["--checkpoint", "{d}/extra.safetensors"],
     "missing [], unexpected ['head.bias']"),
    ("checkpoint truncated", f"{U}:build_good", ["--checkpoint", "{d}/truncated.safetensors"],
     "truncated.safetensors': expected a safetensors file, cannot read it (corrupt or truncated"),
    ("checkpoint not safetensors", f"{U}:build_good", ["--checkpoint", "{d}/junk.safetensors"],
     "junk.safetensors': expected a safetensors file, cannot read it (corrupt or truncated"),
    ("with a preset", f"{U}:build_good", ["--preset", "tiny"], "--preset: expected no --checkpoint or --module with it"),
    ("with a kind", f"{U}:build_good", ["--kind", "layer"], "--kind: expected only with --preset, got --kind layer with "
     "--module"),
]

# (row id, argv with {d} = the fixture directory, exit status, fragment of the one stderr line)
ROWS = [
    ("checkpoint-every negative", [*S, "--checkpoint-every", "-7"], 2,
     "--checkpoint-every: expected an integer >= 1, got -7"),
    ("checkpoint-every zero", [*S, "--checkpoint-every", "0"], 2,
     "--checkpoint-every: expected an integer >= 1, got 0"),
    ("chunk zero", [*S, "--chunk", "0"], 2, "--chunk: expected an integer >= 1, got 0"),
    ("batch zero", [*S, "--batch", "0"], 2, "--batch: expected an integer >= 1, got 0"),
    ("batch absurd", [*S, "--batch", "100000000"], 2, "--batch: expected a batch whose stream fits in memory"),
    ("generate negative", [*S, "--generate", "-5"], 2, "--generate: expected an integer >= 0, got -5"),
    ("then-generate negative", [*S, "--then-generate", "-1"], 2, "--then-generate: expected an integer >= 0, got -1"),
    ("then-generate on a layer", ["stream", "{d}/layer.onnx", *GEN, "--then-generate", "3"], 2,
     "--then-generate: expected 0 for a single-layer model"),
    ("then-generate with nothing streamed", [*S, "--generate", "0", "--then-generate", "3"],
     2, "--then-generate: expected tokens to stream first"),
    ("top-k zero", [*S, "--top-k", "0"], 2, "--top-k: expected an integer >= 1, got 0"),
    ("top-k above vocab", [*S, "--then-generate", "2", "--top-k", "65"], 2,
     "--top-k: expected an integer in [1, 64] (vocab_size), got 65"),
    ("temperature nan", [*S, "--temperature", "nan"], 2,
     "--temperature: expected a finite number >= 0 (0: greedy), got nan"),
    ("temperature negative", [*S, "--temperature", "-1"], 2, "--temperature: expected a finite number >= 0"),
    ("raw-dtype bogus", [*S, "--raw-dtype", "bogus"], 2,
     "--raw-dtype: expected an integer NumPy dtype such as uint16, int32 or int64, got 'bogus'"),
    ("json is a directory", [*S, "--json", "{d}"], 2, "--json: expected a file path, got the directory"),
    ("json in a missing directory", [*S, "--json", "{d}/nope/r.json"], 2,
     "--json: expected a file in an existing directory"),
    ("json under a file", [*S, "--json", "{d}/afile/r.json"], 2, "is not a directory"),
    ("save-state is a directory", [*S, "--save-state", "{d}"], 2,
     "--save-state: expected a file path, got the directory"),
    ("save-state read-only", [*S, "--save-state", "{d}/ro.npz"], 2,
     "--save-state: expected a writable file, got read-only"),
    ("save-state unwritable directory", [*S, "--save-state", "/proc/infini-s.npz"], 2,
     "--save-state: expected a file in a writable directory"),
    ("junk .onnx", ["stream", "{d}/junk.onnx", *GEN], 2,
     "junk.onnx': expected an ONNX file written by `infini export`, ONNX Runtime cannot load it (InvalidProtobuf"),
    ("empty .onnx", ["stream", "{d}/empty.onnx", *GEN], 2, "ONNX Runtime cannot load it"),
    ("missing .onnx", ["stream", "{d}/nope.onnx", *GEN], 2, "model: expected an .onnx file exported by"),
    ("state is a directory", [*S, "--resume", "{d}"], 2,
     "state file: expected a file written by save_state, got the directory"),
    ("state empty", [*S, "--resume", "{d}/empty.npz"], 2,
     "empty.npz': expected an .npz archive written by save_state, cannot read it (EOFError"),
    ("state truncated", [*S, "--resume", "{d}/truncated.npz"], 2,
     "truncated.npz': expected an .npz archive written by save_state, cannot read it (BadZipFile"),
    ("state bit-flipped", [*S, "--resume", "{d}/flipped.npz"], 2,
     "flipped.npz': expected an .npz archive written by save_state, cannot read it (BadZipFile: Bad CRC-32"),
    ("state not a zip", [*S, "--resume", "{d}/text.npz"], 2,
     "text.npz': expected an .npz archive written by save_state, cannot read it (ValueError"),
    ("state a single .npy", [*S, "--resume", "{d}/single.npz"], 2, "not an .npz archive"),
    ("state position edited", [*S, "--resume", "{d}/pos5.npz"], 2,
     "pos5.npz': field 'position': expected 1000 (past_segments 125 x segment_len 8 + 0 pending tokens), got 5"),
    ("state batch edited", [*S, "--resume", "{d}/batch2.npz"], 2,
     "field 'batch': expected 1 (the rows of its arrays), got 2"),
    ("state format unknown", [*S, "--resume", "{d}/format9.npz"], 2,
     "expected format 'infini-attention-state/1' (the formats this version reads: ['infini-attention-state/1']), "
     "got 'infini-attention-state/9'"),
    ("state z negative", [*S, "--resume", "{d}/negz.npz"], 2, "field 'past_memory.0.z': expected values >= 0"),
    ("state z infinite", [*S, "--resume", "{d}/infz.npz"], 2, "state 'past_memory.1.z': expected finite values"),
    ("state M NaN", [*S, "--resume", "{d}/nanM.npz"], 2, "state 'past_memory.0.M': expected finite values"),
    ("state memory before any segment", [*S, "--resume", "{d}/seg0.npz"], 2, "expected zeros while past_segments is 0"),
    ("resume beyond the tokens file", ["stream", "{d}/lm.onnx", "--tokens", "{d}/ids.npy", "--resume", "{d}/s1000.npz",
                                       "--no-progress", "--provider", "cpu"], 2,
     "expected a state at most at the end of --tokens (500 tokens), got a state at token 1,000"),
    ("junk .pt", ["export", "--checkpoint", "{d}/junk.pt", "-o", "{d}/x.onnx"], 2,
     "--checkpoint '{d}/junk.pt': expected a checkpoint written by export.checkpoint.save_checkpoint"),
    *[(f"--module {name}", ["export", "--module", module, "-o", "{d}/x.onnx", *extra], 2, fragment) for name, module,
      extra, fragment in MODULE_ROWS],
    ("export output is a directory", ["export", "--preset", "tiny", "-o", "{d}"], 2,
     "-o/--output: expected a file path, got the directory"),
    ("vectors write unwritable", ["vectors", "write", "/proc/infini-vectors"], 2,
     "vectors write DIR: expected a directory that exists or can be created"),
    ("vectors write under a file", ["vectors", "write", "{d}/afile/v"], 2,
     "vectors write DIR: expected a directory that exists or can be created"),
    ("conformance json is a directory", ["conformance", "--impl", REF, "--json", "{d}"], 2,
     "--json: expected a file path, got the directory"),
    ("vectors check json is a directory", ["vectors", "check", "{d}", "--outputs", "{d}", "--json", "{d}"], 2,
     "--json: expected a file path, got the directory"),
    ("conformance junit in a missing directory", ["conformance", "--impl", REF, "--junit", "{d}/no/r.xml"], 2,
     "--junit: expected a file in an existing directory"),
]


@pytest.mark.parametrize("argv, code, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_before_any_work(f, capsys, argv, code, fragment):
    assert main([a.format(d=f) for a in argv]) == code
    out, err = capsys.readouterr()
    assert fragment.format(d=f) in err, err
    assert err.count("\n") == 1 and err.startswith(f"infini {argv[0]}: error: ") and "Traceback" not in err, err
    assert "streamed" not in out and "[ 1/" not in err and "exported" not in out  # refused before the work
    assert os.stat(f / "ro.npz").st_mode & 0o777 == 0o444 and (f / "ro.npz").read_bytes() == b""  # left alone
    assert not (f / "x.onnx").exists() and not list(f.glob(".x.onnx.*"))  # a refused export writes nothing


@pytest.mark.parametrize("argv, rows", [
    (["conformance", "--impl", "{d}/layer.onnx", "--dtype", "float64", "-q"], "0 passed, 0 failed, 15 not supported"),
    (["conformance", "--impl", REF, "--only", "gradients", "-q"], "0 passed, 0 failed, 1 not supported"),
], ids=["onnx layer at float64", "reference without grad"])
def test_nothing_checked_exits_3(f, capsys, argv, rows):
    assert main([a.format(d=f) for a in argv]) == 3
    out = capsys.readouterr().out
    assert "NOTHING CHECKED under profile" in out and rows in out and "CONFORMS" not in out


def test_generate_after_resume_streams_that_many_more(f, capsys):
    assert main(["stream", str(f / "lm.onnx"), *GEN, "--resume", str(f / "s1000.npz")]) == 0
    out = capsys.readouterr().out
    assert "resumed at token 1,000" in out and "streamed 100 tokens (to position 1,100)" in out


# ------------------------------------------------------------------ the error policy (reference/cli.py)

class _EP:  # an entry point of group infini_attention.commands
    def __init__(self, name, load):
        self.name, self.load = name, load


def _provider(func):
    return _EP("fake", lambda: lambda sub: sub.add_parser("fake").set_defaults(func=func))


def _raise(exc):
    def func(args):
        raise exc
    return func


@pytest.mark.parametrize("exc, code, fragment", [
    (ref_cli.UsageError("--x: expected 1, got 2"), 2, "infini fake: error: --x: expected 1, got 2"),
    (ValueError("x: expected a, got b"), 2, "infini fake: error: x: expected a, got b"),
    (FileNotFoundError(2, "No such file or directory", "/nope"), 2, "error: No such file or directory: '/nope'"),
    (IsADirectoryError(21, "Is a directory", "/tmp"), 2, "error: Is a directory: '/tmp'"),
    (PermissionError(13, "Permission denied", "/root/x"), 2, "error: Permission denied: '/root/x'"),
    (OSError(28, "No space left on device", "/full/s.npz"), 2, "error: No space left on device: '/full/s.npz'"),
    (ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"), 2,
     "error: this command needs onnxruntime, which cannot be imported"),
    (ModuleNotFoundError("No module named 'zzz'", name="zzz"), 1, "internal error: ModuleNotFoundError"),
    (RuntimeError("boom\nsecond line"), 1,
     "infini fake: internal error: RuntimeError: boom; second line (run with --debug for the traceback)"),
    (MemoryError(), 1, "internal error: MemoryError"),
    (KeyboardInterrupt(), 130, "infini fake: interrupted"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None)
def test_error_policy(monkeypatch, capsys, exc, code, fragment):
    monkeypatch.setattr(ref_cli, "providers", lambda: [_provider(_raise(exc))])
    assert main(["fake"]) == code
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1, err
    if isinstance(exc, ModuleNotFoundError) and code == 2:
        assert "pip install 'infini-attention[ort]'" in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(ref_cli, "providers", lambda: [_provider(_raise(RuntimeError("boom")))])
    for argv in (["--debug", "fake"], ["fake", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "internal error: RuntimeError: boom" in err


def test_provider_missing_a_dependency_leaves_the_others(monkeypatch, capsys):
    def broken():
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
    monkeypatch.setattr(ref_cli, "providers", lambda: [_EP("export", broken), _provider(lambda args: 0)])
    assert main(["fake"]) == 0
    assert main(["export", "--preset", "tiny"]) == 2
    assert "infini export: error: this command needs onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["stream", "x.onnx"])
    assert exit_.value.code == 2 and "commands of 'export' are unavailable" in capsys.readouterr().err


def test_argparse_errors_keep_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stream", "m.onnx", "--generate", "abc"])
    assert exit_.value.code == 2 and "invalid int value: 'abc'" in capsys.readouterr().err


def test_broken_pipe_exits_141_quietly():
    code = ("import sys; from argparse import Namespace; from infini_attention.reference.cli import run; "
            "sys.exit(run(Namespace(command='fake', func=lambda a: [print('x' * 999) for _ in range(2000)] and 0)))")
    proc = subprocess.run(["bash", "-c", f'set -o pipefail; "{sys.executable}" -c "{code}" | head -c 10 >/dev/null'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


# --------------------------------------------------------------------------- saves, SIGINT, progress

def test_save_keeps_mode_writes_through_symlink_and_cleans_orphans(f, tmp_path):
    sess = InfiniSession(f / "lm.onnx", provider="cpu")
    sess.feed(np.arange(20))
    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    sess.save_state(target)
    os.chmod(target, 0o640)
    link.symlink_to(target)
    dead, old_style = tmp_path / "real.npz.999999999.ab12.tmp", tmp_path / "real.npz.x7k2m9.tmp"
    live, other = tmp_path / f"real.npz.{os.getpid()}.cd34.tmp", tmp_path / "other.npz.1.tmp"
    for p in (dead, old_style, live, other):
        p.write_bytes(b"partial")
    sess.feed(np.arange(5))
    sess.save_state(link)
    assert link.is_symlink() and os.stat(target).st_mode & 0o777 == 0o640
    fresh = InfiniSession(f / "lm.onnx", provider="cpu")
    fresh.load_state(target)
    assert fresh.position == 25
    assert not dead.exists() and not old_style.exists() and live.exists() and other.exists()
    with pytest.raises(IsADirectoryError, match="state file: expected a file path, got the directory"):
        sess.save_state(tmp_path)
    old = os.umask(0o027)
    try:
        sess.save_state(tmp_path / "new.npz")  # a new file: 0o666 & ~umask, as open() gives
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new.npz").st_mode & 0o777 == 0o640


def test_disk_full_during_a_save_is_one_line_naming_the_file(f, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    state = tmp_path / "s.npz"
    assert main([*[a.format(d=f) for a in S], "--save-state", str(state), "--checkpoint-every", "50"]) == 2
    assert capsys.readouterr().err == f"infini stream: error: No space left on device: {str(state)!r}\n"
    assert os.listdir(tmp_path) == []  # no temp file left


def test_sigint_reports_the_last_saved_position(f, tmp_path):
    state = tmp_path / "s.npz"
    cmd = [sys.executable, "-m", "infini_attention.export.cli", "stream", str(f / "lm.onnx"), "--generate",
           "100000000", "--checkpoint-every", "4096", "--save-state", str(state), "--no-progress", "--provider", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    saved = InfiniSession(f / "lm.onnx", provider="cpu")
    saved.load_state(state)
    assert f"; last saved state: {state} at token {saved.position:,}" in err and saved.position % 4096 == 0, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(f, capsys):
    from infini_attention.export.stream import Source, run_stream

    sess = InfiniSession(f / "lm.onnx", provider="cpu")
    with pytest.raises(ValueError, match="checkpoint_every: expected an integer number of tokens >= 1, got -7"):
        run_stream(sess, Source(sess, 100), checkpoint_every=-7)
    with pytest.raises(ValueError, match="chunk: expected an integer number of tokens >= 1, got 0"):
        run_stream(sess, Source(sess, 100), chunk=0)
    run_stream(sess, Source(sess, 2000), checkpoint_every=500, progress=True)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and 10 <= len(lines) <= 12, err
    assert lines[0].startswith("200/2,000 tok (10%)") and lines[-1].startswith("2,000/2,000 tok (100%)"), err

"""`infini demo`: the README's main job, on the committed passkey model (examples/passkey/).

1. the bundled PyTorch implementation against the NumPy reference, on the model's own weights;
2. export to ONNX (self-checked against the reference);
3. stream a long passkey document through ONNX Runtime segment by segment, verifying the stream
   against PyTorch at checkpoints (logits and memory state) and recording resident memory;
4. ask for the passkey at the end, decode the answer token by token, and say what happened.

The passkey task and weights live in the source checkout's ``examples/passkey`` (they are an
example, not part of the installed package), so this demo needs a checkout.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

from .demo import check_torch_against_reference, verify_against_torch
from .stream import run_stream

REPO_ROOT = Path(__file__).resolve().parents[1]


def _passkey_modules():
    """examples.passkey.{data, model} from the checkout this package is installed from."""
    if not (REPO_ROOT / "examples" / "passkey" / "data.py").is_file():
        raise RuntimeError(f"demo: expected the source checkout's examples/passkey next to {REPO_ROOT / 'export'}; "
                           "install the project editable from a checkout (bash .ci/setup), or use "
                           "`infini demo --preset small` for the random-weights streaming demo")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("examples.passkey.data"), importlib.import_module("examples.passkey.model")


class _DocSource:
    """A passkey document as a stream `Source`: produced lazily, chunk by chunk (never 1M ids at once)."""

    def __init__(self, doc):
        self.doc, self.length, self.data = doc, doc.length, None

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.doc.chunk(start, stop)[None]  # (1, stop - start)


def run_passkey_demo(length: int, depth: float = 0.5, update: str = "delta", verify_every: int = 262144,
                     out_dir="artifacts/demo", provider: str = "auto", seed: int = 0, progress: bool = True,
                     echo=print) -> dict:
    import torch

    from ..torch_impl import InfiniTransformerLM
    from .exporter import export
    from .session import InfiniSession

    data, model = _passkey_modules()
    ckpt = model.checkpoint_path(update)
    config, params, meta = model.load_checkpoint(ckpt)
    params = {n: np.asarray(a, np.float64) for n, a in params.items()}
    a, N = config.attn, config.attn.segment_len
    rng = np.random.default_rng(seed)
    # the evaluation's layout: the question opens a segment, so the 5 answer digits never straddle a
    # segment boundary (the committed model is weaker there: examples/passkey/README.md)
    prompt_len = data.prompt_length(int(length), N, 0)
    doc = data.PasskeyDoc(prompt_len, float(depth), data.random_passkey(rng), int(rng.integers(0, 2**31 - 1)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    echo(f"model: {ckpt.relative_to(REPO_ROOT)}: {config.n_layers} layers x {a.n_heads} heads, d_model "
         f"{a.d_model}, segment {N} tokens, {a.update} memory, {sum(p.size for p in params.values()):,} parameters"
         + (f", trained on documents of <= {meta['train_length']:,} tokens" if meta.get("train_length") else ""))

    echo("[1/4] PyTorch implementation vs the reference (float64, this model's weights)")
    echo("      " + check_torch_against_reference(config, params, seed))
    echo("[2/4] export to ONNX (self-checked against the reference)")
    result = export(config, params, out_dir / f"{ckpt.stem}.onnx", seed=seed)
    echo(f"      {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, {len(result.checks)} comparisons "
         f"passed, {result.seconds:.1f} s)")

    sess = InfiniSession(result.path, provider=provider)
    passkey = "".join(map(str, doc.answer))
    end = doc.key_pos + data.NEEDLE_LEN - 1
    echo(f"[3/4] stream the prompt through ONNX Runtime ({sess.provider_used}: {sess.provider_reason})")
    echo(f"      {doc.length:,} tokens of filler; passkey {passkey} at tokens {doc.key_pos:,}-{end:,} "
         f"(depth {depth:.0%}, segment {doc.key_pos // N:,} of {-(-doc.length // N):,})")
    torch_model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval()
    source = _DocSource(doc)
    verified = []
    report = run_stream(sess, source, chunk=64 * N, checkpoint_every=verify_every, progress=progress,
                        on_checkpoint=lambda s, pos: verified.append(verify_against_torch(s, torch_model, source, pos)))
    for cp, line in zip(report.checkpoints, verified):
        echo(f"      {cp['position']:>10,} tok  peak RSS {cp['peak_rss'] / 2**20:6.1f} MiB  {line}")

    echo("[4/4] ask for the passkey; decode the answer token by token")
    got = "".join(map(str, sess.generate(data.N_DIGITS)[0]))
    ok = got == passkey
    first, last = report.checkpoints[0], report.checkpoints[-1]
    echo(f"      question at token {doc.question_pos:,}: {doc.distance:,} tokens after the passkey, "
         f"{doc.question_pos // N - end // N:,} segments later (local attention sees only its own segment)")
    echo(f"      model answered {got}: {'CORRECT' if ok else 'WRONG'} (passkey {passkey})")
    echo(f"      {report.tokens:,} tokens in {report.seconds:.1f} s = {report.tokens_per_second:,.0f} tokens/s; "
         f"state {sess.state_nbytes:,} bytes now (M, z: {model.state_bytes(config):,} bytes at any length)")
    echo(f"      peak RSS {first['peak_rss'] / 2**20:.1f} MiB at {first['position']:,} tokens, "
         f"{last['peak_rss'] / 2**20:.1f} MiB at {last['position']:,} "
         f"({100 * (last['peak_rss'] / first['peak_rss'] - 1):+.1f}%)")
    return {"length": doc.length, "depth": depth, "passkey": passkey, "answer": got, "correct": ok,
            "distance": doc.distance, "tokens_per_second": report.tokens_per_second,
            "state_nbytes": sess.state_nbytes, "peak_rss_first": first["peak_rss"], "peak_rss_end": last["peak_rss"],
            "verified": len(verified)}

"""Passkey retrieval at a long length, from the committed weights, in a few readable lines.

    python -m examples.passkey.demo                          # 1M tokens, delta rule
    python -m examples.passkey.demo --length 131072 --depth 0.25 --update linear --control

`run_demo(...)` is what `infini demo` calls: it exports the committed checkpoint to ONNX (checked
against the NumPy reference by the exporter), streams one generated document through ONNX
Runtime segment by segment at constant memory, decodes the answer token by token and prints
where the passkey was, how many tokens later it was asked, what the model answered and the size
of the state.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from . import data
from .model import checkpoint_path, load_checkpoint, memory_off, state_bytes

DEMO_LENGTH = 1 << 20


def _export(config, params, path: Path) -> Path:
    from infini_attention.export import export

    export(config, {k: np.asarray(v, np.float64) for k, v in params.items()}, path)
    return path


def _stream(onnx_path: Path, doc: data.PasskeyDoc, chunk: int, progress: bool, threads: int | None):
    from infini_attention.export import InfiniSession

    sess = InfiniSession(onnx_path, provider="cpu", batch=1, intra_op_threads=threads)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=doc.length, unit="tok", unit_scale=True, leave=False, desc="streaming")
        except ImportError:  # pragma: no cover
            bar = None
    t0 = time.perf_counter()
    for start in range(0, doc.length, chunk):
        piece = doc.chunk(start, start + chunk)
        sess.feed(piece[None], outputs="none")
        if bar is not None:
            bar.update(piece.size)
    answer = sess.generate(data.N_DIGITS)[0]
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return answer, seconds, sess


def run_demo(length: int = DEMO_LENGTH, depth: float = 0.5, update: str = "delta", seed: int = 0,
             checkpoint=None, control: bool = False, out_dir=None, progress: bool = True,
             threads: int | None = None, echo=print) -> dict:
    """Hide a random 5-digit passkey at ``depth`` of a ``length``-token document, ask for it at the end
    (the question opens a new segment: `data.prompt_length`), print what the exported model answers
    through ONNX Runtime; returns the facts as a dict.

    ``control=True`` also runs the same document with the memory switched off (every gate forced
    to the local branch): it cannot answer once the passkey has left the last segment."""
    ckpt = Path(checkpoint) if checkpoint else checkpoint_path(update)
    config, params, meta = load_checkpoint(ckpt)
    a = config.attn
    N = a.segment_len
    rng = np.random.default_rng(seed)
    doc = data.PasskeyDoc(data.prompt_length(int(length), N), float(depth), data.random_passkey(rng),
                          int(rng.integers(0, 2**31 - 1)))
    tmp = tempfile.TemporaryDirectory() if out_dir is None else None
    out = Path(tmp.name if tmp else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        echo(f"model: {ckpt.name}: {config.n_layers} layers x {a.n_heads} heads, d_model {a.d_model}, "
             f"segment {N} tokens, {a.update} memory update, "
             f"{sum(np.asarray(v).size for v in params.values()):,} parameters"
             + (f", trained on documents of <= {meta['train_length']:,} tokens" if meta.get("train_length") else ""))
        onnx_path = _export(config, params, out / f"{ckpt.stem}.onnx")
        passkey = "".join(map(str, doc.answer))
        end = doc.key_pos + data.NEEDLE_LEN - 1
        echo(f"prompt: {doc.length - 1:,} tokens of filler text, then the question; passkey {passkey} said (twice) at "
             f"tokens {doc.key_pos:,}-{end:,} (depth {depth:.0%}, segment {doc.key_pos // N:,} of "
             f"{-(-doc.length // N):,})")
        echo(f"question at token {doc.question_pos:,}: asked {doc.distance:,} tokens after the passkey, "
             f"{doc.question_pos // N - end // N:,} segments later (local attention sees only its own segment)")
        answer, seconds, sess = _stream(onnx_path, doc, 64 * N, progress, threads)
        got = "".join(map(str, answer))
        ok = got == passkey
        mem = state_bytes(config)
        echo(f"model answered: {got}  -> {'CORRECT' if ok else 'WRONG'}   ({doc.length:,} tokens streamed through "
             f"ONNX Runtime {sess.provider_used} in {seconds:.1f} s, {doc.length / seconds:,.0f} tokens/s)")
        pend = config.n_layers * a.n_kv_heads * (N - 1) * (a.d_key + a.d_value) * 4
        echo(f"state carried from segment to segment: {mem:,} bytes of compressive memory (M, z) + the keys/values "
             f"of the unfinished segment (at most {pend:,} bytes): constant, whatever the length")
        result = {"length": int(length), "prompt_length": doc.length, "depth": depth, "passkey": passkey, "answer": got, "correct": ok,
                  "key_pos": doc.key_pos, "question_pos": doc.question_pos, "distance": doc.distance,
                  "memory_bytes": mem, "state_bytes": sess.state_nbytes, "seconds": seconds,
                  "checkpoint": str(ckpt)}
        if control:
            off = _export(config, memory_off(params), out / f"{ckpt.stem}_memoff.onnx")
            c_answer, c_seconds, _ = _stream(off, doc, 64 * N, progress, threads)
            c_got = "".join(map(str, c_answer))
            echo(f"control, memory off (same weights, every gate on local attention): answered {c_got}  -> "
                 f"{'CORRECT' if c_got == passkey else 'WRONG'}")
            result.update(control_answer=c_got, control_correct=c_got == passkey)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=DEMO_LENGTH)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--update", choices=["linear", "delta"], default="delta")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", action="store_true", help="also run the memory-off control (twice the time)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    r = run_demo(args.length, args.depth, args.update, args.seed, args.checkpoint, args.control,
                 progress=args.progress, threads=args.threads)
    return 0 if r["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Passkey retrieval at a long length, from the committed weights, in a few readable lines.

    python -m examples.passkey.demo --control                # 128K tokens, linear rule, + memory-off control
    python -m examples.passkey.demo --length 1048576 --depth 0.25 --update delta

`run_demo(...)` is the one passkey demonstration; `infini demo` (the README's main job) calls it with
``verify_every`` set (`run_passkey_demo`). It exports the committed checkpoint to ONNX (self-checked
by the exporter, then checked against PyTorch on passkey documents), streams one generated document
through ONNX Runtime segment by segment at constant memory, decodes the answer token by token and
prints where the passkey was, how many tokens later it was asked, what the model answered and the
size of the state. With ``verify_every``, PyTorch reads the same document from token 0 on its own
state in a second process (`export.demo.TorchFollower`) and every checkpoint compares the two.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from . import data
from .exported import EXPORT_NOTES, export_checked
from .model import checkpoint_path, load_checkpoint, memory_off, state_bytes

DEMO_LENGTH = 1 << 17  # 128K: where the committed models are reliable (results/RESULTS.md); 1M works often
FEED = 64  # segments per feed() of the prompt (the session still runs one ONNX call per segment)


class DocSource:
    """A passkey document as an `export.stream` source: produced lazily, chunk by chunk (picklable,
    so the PyTorch follower's process generates its own copy)."""

    def __init__(self, doc: data.PasskeyDoc):
        self.doc, self.length = doc, doc.length

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.doc.chunk(start, stop)[None]  # (1, stop - start)


def _stream(onnx_path: Path, doc: data.PasskeyDoc, *, provider: str, threads: int | None, progress: bool,
            follower=None, verify_every: int = 0):
    """Feed the prompt through an InfiniSession, then decode the answer -> (answer, report, session, checks)."""
    from ..session import InfiniSession
    from ..stream import run_stream
    from ..verify import follow_stream

    sess = InfiniSession(onnx_path, provider=provider, batch=1, intra_op_threads=threads)
    chunk = FEED * sess.segment_len
    if follower is None:
        report, checks = run_stream(sess, DocSource(doc), chunk=chunk, checkpoint_every=doc.length,
                                    progress=progress), []
    else:
        checks, report = follow_stream(sess, follower, DocSource(doc), verify_every, progress, chunk=chunk)
    return sess.generate(data.N_DIGITS)[0], report, sess, checks


def run_demo(length: int = DEMO_LENGTH, depth: float = 0.5, update: str = "linear", seed: int = 0,
             checkpoint=None, control: bool = False, out_dir=None, progress: bool = True,
             threads: int | None = None, provider: str = "cpu", verify_every: int = 0, echo=print) -> dict:
    """Hide a random 5-digit passkey at ``depth`` of a ``length``-token document, ask for it at the end
    (the question opens a new segment: `data.prompt_length`), print what the exported model answers
    through ONNX Runtime; returns the facts as a dict.

    ``verify_every`` > 0: PyTorch (float32) streams the same document on its own state beside ONNX
    Runtime; every that many tokens their memories, and the logits and memories of the next N + 3
    tokens, are compared, and at the end PyTorch's own greedy answer. ``control=True`` also runs the
    same document with the memory switched off (every gate forced to the local branch): it cannot
    answer once the passkey has left the last segment."""
    ckpt = Path(checkpoint) if checkpoint else checkpoint_path(update)
    config, params, meta = load_checkpoint(ckpt)
    a, N = config.attn, config.attn.segment_len
    rng = np.random.default_rng(seed)
    doc = data.PasskeyDoc(data.prompt_length(int(length), N), float(depth), data.random_passkey(rng),
                          int(rng.integers(0, 2**31 - 1)))
    tmp = tempfile.TemporaryDirectory() if out_dir is None else None
    out = Path(tmp.name if tmp else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    follower = None
    try:
        echo(f"model: {ckpt.name}: {config.n_layers} layers x {a.n_heads} heads, d_model {a.d_model}, "
             f"segment {N} tokens, {a.update} memory update, "
             f"{sum(np.asarray(v).size for v in params.values()):,} parameters"
             + (f", trained on documents of <= {meta['train_length']:,} tokens" if meta.get("train_length") else ""))
        if verify_every:
            from ..demo import check_torch_against_reference
            from ..verify import TorchFollower, checkpoint_positions

            p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
            follower = TorchFollower(config, p64, DocSource(doc), checkpoint_positions(doc.length, verify_every),
                                     greedy=data.N_DIGITS, truth=True)  # start-up overlaps the checks, export
            echo("PyTorch vs the reference on these weights: " + check_torch_against_reference(config, p64, seed))
        onnx_path = export_checked(config, params, out / f"{ckpt.stem}.onnx")
        echo(f"exported {onnx_path.name} ({onnx_path.stat().st_size / 2**10:,.0f} KiB): {EXPORT_NOTES[str(onnx_path)]}")
        passkey = "".join(map(str, doc.answer))
        end = doc.key_pos + data.NEEDLE_LEN - 1
        echo(f"prompt: {doc.length - 1:,} tokens of filler text, then the question; passkey {passkey} said (twice) at "
             f"tokens {doc.key_pos:,}-{end:,} (depth {depth:.0%}, segment {doc.key_pos // N:,} of "
             f"{-(-doc.length // N):,})")
        echo(f"question at token {doc.question_pos:,}: asked {doc.distance:,} tokens after the passkey, "
             f"{doc.question_pos // N - end // N:,} segments later (local attention sees only its own segment)")
        answer, report, sess, checks = _stream(onnx_path, doc, provider=provider, threads=threads, progress=progress,
                                               follower=follower, verify_every=verify_every)
        for cp, check in zip([None] + report.checkpoints, checks):
            where = "start" if cp is None else f"{cp['position']:>9,} tok  peak RSS {cp['peak_rss'] / 2**20:6.1f} MiB"
            echo(f"  {where}  {check.line()}")
        got = "".join(map(str, answer))
        ok = got == passkey
        mem = state_bytes(config)
        echo(f"model answered: {got}  -> {'CORRECT' if ok else 'WRONG'}   ({doc.length:,} tokens streamed through "
             f"ONNX Runtime {sess.provider_used} in {report.seconds:.1f} s, {report.tokens_per_second:,.0f} tokens/s)")
        pend = config.n_layers * a.n_kv_heads * (N - 1) * (a.d_key + a.d_value) * 4
        echo(f"state carried from segment to segment: {mem:,} bytes of compressive memory (M, z) + the keys/values "
             f"of the unfinished segment (at most {pend:,} bytes): constant, whatever the length")
        first, last = report.checkpoints[0], report.checkpoints[-1]
        result = {"length": int(length), "prompt_length": doc.length, "depth": depth, "passkey": passkey,
                  "answer": got, "correct": ok, "key_pos": doc.key_pos, "question_pos": doc.question_pos,
                  "distance": doc.distance, "memory_bytes": mem, "state_bytes": sess.state_nbytes,
                  "seconds": report.seconds, "tokens_per_second": report.tokens_per_second,
                  "peak_rss_first": first["peak_rss"], "peak_rss_end": last["peak_rss"],
                  "first_checkpoint": first["position"], "verified": len(checks), "checkpoint": str(ckpt)}
        if follower is not None:
            result.update(_torch_verdict(follower, checks, answer, echo))
        if control:
            off = export_checked(config, memory_off(params), out / f"{ckpt.stem}_memoff.onnx")
            c_answer, _, _, _ = _stream(off, doc, provider=provider, threads=threads, progress=progress)
            c_got = "".join(map(str, c_answer))
            echo(f"control, memory off (same weights, every gate on local attention): answered {c_got}  -> "
                 f"{'CORRECT' if c_got == passkey else 'WRONG'}")
            result.update(control_answer=c_got, control_correct=c_got == passkey)
        return result
    finally:
        if follower is not None:
            follower.close()
        if tmp is not None:
            tmp.cleanup()


def _torch_verdict(follower, checks, answer, echo) -> dict:
    """PyTorch's own greedy answer against ORT's, the drift line, and whether everything agreed."""
    from ..verify import drift_line

    torch_answer = "".join(map(str, follower.last["greedy"][0]))
    same = torch_answer == "".join(map(str, answer))
    echo(f"PyTorch, which read the whole document on its own state ({follower.seconds:.1f} s in a second process), "
         f"answered {torch_answer}: {'the same' if same else 'DIFFERENT'}")
    echo(drift_line(checks))
    return {"verified_ok": same and all(c.ok for c in checks), "torch_answer": torch_answer,
            "drift": [(c.position, c.scores) for c in checks]}


def run_passkey_demo(length: int, depth: float = 0.5, update: str = "linear", verify_every: int = 32768,
                     out_dir="artifacts/demo", provider: str = "auto", seed: int = 0, progress: bool = True,
                     threads: int | None = 1, echo=print) -> dict:
    """`infini demo`, part 1: `run_demo` with verification, and the stream's resident memory."""
    result = run_demo(length, depth, update, seed, out_dir=out_dir, progress=progress, provider=provider,
                      threads=threads, verify_every=verify_every, echo=echo)
    echo(f"peak RSS {result['peak_rss_first'] / 2**20:.1f} MiB after {result['first_checkpoint']:,} tokens, "
         f"{result['peak_rss_end'] / 2**20:.1f} MiB after {result['prompt_length']:,} "
         f"({100 * (result['peak_rss_end'] / result['peak_rss_first'] - 1):+.1f}%)")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=DEMO_LENGTH)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--update", choices=["linear", "delta"], default="linear")
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

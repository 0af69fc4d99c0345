"""Passkey accuracy through the EXPORTED ONNX model in ONNX Runtime, streamed segment by segment.

    python -m examples.passkey.evaluate                      # both checkpoints, the full table
    python -m examples.passkey.evaluate --update delta --lengths 256,2048 --samples 20

For each checkpoint the model is exported twice with `infini_attention.export.export` (each
export self-checks the ONNX graph against the NumPy reference): as trained, and as the
memory-off control (every gate beta forced to -30, so sigmoid(beta) ~ 1e-13 and the output is
the local-attention branch). Each cell of the table streams ``samples`` documents (one batch)
through an `InfiniSession`: the prompt is generated and fed chunk by chunk (ORT runs one call per
segment; the state is M, z and the pending keys/values, constant in size), then the answer is
decoded greedily, token by token (5 calls). A sample is correct when all 5 digits are.

Writes ``results/eval_{update}.json`` (every cell, with timings and the command) and
``results/RESULTS.md`` (from every ``eval_*.json`` there). The two checkpoints can be evaluated in
parallel, one process each (``--update linear`` / ``--update delta``, one thread each).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from infini_attention.export.passkey import data
from infini_attention.export.passkey.exported import EXPORT_NOTES, export_checked, open_session  # noqa: F401
from infini_attention.export.passkey.model import (CHECKPOINT_DIR, MEMORY_OFF_BETA, checkpoint_path, load_checkpoint,
                                                   memory_off, state_bytes)

from .report import DEPTHS, fmt_len, load_results, markdown

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
ONNX_DIR = HERE.parents[1] / "artifacts" / "passkey"  # artifacts/ is git-ignored
FEED_CHUNK = 4096  # tokens generated and handed to the session per feed() (it runs one call per segment)


def export_onnx(ckpt: Path, control: bool = False, out_dir: Path = ONNX_DIR) -> Path:
    """Export the checkpoint (or its memory-off control) to ONNX; cached by the checkpoint's mtime."""
    config, params, _ = load_checkpoint(ckpt)
    if control:
        params = memory_off(params)
    out = Path(out_dir) / f"{ckpt.stem}{'_memoff' if control else ''}.onnx"
    if out.is_file() and out.stat().st_mtime > ckpt.stat().st_mtime and str(out) in EXPORT_NOTES:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_checked(config, params, out)


def stream_docs(session, docs: list, progress=None) -> np.ndarray:
    """Feed the prompts of ``docs`` (same length) chunk by chunk, then decode 5 tokens greedily.

    Returns the decoded tokens (B, 5). The session is reset first."""
    length = docs[0].length
    assert all(d.length == length for d in docs)
    session.reset(len(docs))
    pos = 0
    while pos < length:
        stop = min(length, pos + FEED_CHUNK)
        session.feed(np.stack([d.chunk(pos, stop) for d in docs]), outputs="none")
        if progress is not None:
            progress.update((stop - pos) * len(docs))
        pos = stop
    return session.generate(data.N_DIGITS)


def evaluate_cell(session, length: int, depth: float, samples: int, seed: int, progress=None,
                  question_offset: int | None = 0) -> dict:
    """``samples`` documents of ``length`` tokens (``<s>``, filler, the needle at ``depth``), then the
    question; ``question_offset`` is the question's offset in its segment (0: it opens a segment,
    the layout the model was mostly trained on; the prompt is then padded with filler to a segment
    boundary; None: no padding, the question lands where the document ends)."""
    rng = np.random.default_rng([seed, length, int(round(depth * 1000))])
    prompt_len = data.prompt_length(length, session.segment_len, question_offset)
    docs = data.make_docs(rng, samples, prompt_len, depth)
    t0 = time.perf_counter()
    pred = stream_docs(session, docs, progress)
    seconds = time.perf_counter() - t0
    answers = np.stack([d.answer for d in docs])
    correct = (pred == answers).all(axis=1)
    d0 = docs[0]
    return {
        "length": length, "prompt_length": prompt_len, "depth": depth, "samples": samples, "correct": int(correct.sum()),
        "accuracy": float(correct.mean()), "digit_accuracy": float((pred == answers).mean()),
        "key_pos": d0.key_pos, "distance": d0.distance,
        "in_last_segment": d0.key_pos // session.segment_len == d0.question_pos // session.segment_len,
        "seconds": round(seconds, 2), "tokens_per_second": round(samples * (length + data.N_DIGITS) / seconds),
        "examples": [{"passkey": "".join(map(str, d.answer)), "answer": "".join(map(str, p))}
                     for d, p in zip(docs[:3], pred[:3])],
    }


def _checkpoint_name(ckpt: Path) -> str:
    """As the committed results name it ("checkpoints/passkey_linear.safetensors"), relative to the package's passkey/."""
    home, path = CHECKPOINT_DIR.parent, Path(ckpt).resolve()
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(ckpt)


def parse_lengths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1024
        elif part.endswith("m"):
            part, mult = part[:-1], 1024 * 1024
        out.append(int(float(part) * mult))
    return out


def samples_for(length: int, args) -> int:
    """Fewer samples where a sample costs more (stated in the table)."""
    if length >= 1_000_000:
        return args.samples_1m
    if length >= 100_000:
        return args.samples_128k
    return args.samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update", choices=["linear", "delta", "both"], default="both")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="evaluate this checkpoint (.safetensors, or an older .npz) instead (one update)")
    p.add_argument("--lengths", default=None, help="comma list, e.g. 256,2048,32K,128K,1M "
                   "(default: training length, 8x, 32K, 128K, 1M)")
    p.add_argument("--depths", default="start,middle,end")
    p.add_argument("--samples", type=int, default=50, help="documents per cell (lengths < 100K)")
    p.add_argument("--samples-128k", type=int, default=20)
    p.add_argument("--samples-1m", type=int, default=8)
    p.add_argument("--control-max-len", type=int, default=1 << 17,
                   help="run the memory-off control up to this length (default 128K: with every gate at "
                        "1e-13 its answer cannot depend on anything before the question's segment; "
                        "`demo --control` shows it at 1M)")
    p.add_argument("--offsets", default="0,4,8,12,16,20,24,26,27,28,29,30,31",
                   help="question offsets in its segment for the alignment check at 8x the training length "
                        "(middle depth, memory on); empty: skip")
    p.add_argument("--checks-only", action="store_true",
                   help="keep the table of an existing eval_{update}.json; redo the alignment and control checks")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                   help="writes eval_{update}.json here, and RESULTS.md from every eval_*.json in it")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    command = "python -m examples.passkey.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.checkpoint is not None:
        ckpts = {load_checkpoint(args.checkpoint)[0].attn.update: args.checkpoint}
    else:
        updates = ["linear", "delta"] if args.update == "both" else [args.update]
        ckpts = {u: checkpoint_path(u) for u in updates}
    depths = {name: DEPTHS[name] for name in args.depths.split(",")}
    machine = f"{platform.machine()}, {args.threads} thread{'s' if args.threads > 1 else ''}"
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    for update, ckpt in ckpts.items():
        config, params, meta = load_checkpoint(ckpt)
        train_len = int(meta.get("train_length", 0)) or 256
        lengths = parse_lengths(args.lengths) if args.lengths else [train_len, 8 * train_len, 32768, 131072, 1 << 20]
        entry = {"command": command, "seed": args.seed, "machine": machine, "memory_off_beta": MEMORY_OFF_BETA,
                 "checkpoint": _checkpoint_name(ckpt),
                 "train_length": train_len, "config": config.to_dict(), "state_bytes": state_bytes(config),
                 "cells": []}
        out_json = args.out_dir / f"eval_{update}.json"
        if args.checks_only:  # keep the table, redo the two checks below
            entry = json.loads(out_json.read_text())["models"][update]
            entry["checks_command"] = command
        for control in (False, True):
            onnx_path = export_onnx(ckpt, control)
            entry[f"export_{'control' if control else 'model'}"] = EXPORT_NOTES[str(onnx_path)]
            if args.checks_only:
                continue
            runs = [(L, dn) for L in lengths for dn in depths if not (control and L > args.control_max_len)]
            total = sum(samples_for(L, args) * L for L, _ in runs)
            bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not args.progress or tqdm is None,
                       desc=f"{update}{' memory-off' if control else ''}") if tqdm else None
            for L, dname in runs:
                n = samples_for(L, args)
                sess = open_session(onnx_path, n, args.threads)
                cell = evaluate_cell(sess, L, depths[dname], n, args.seed, bar)
                cell.update(depth_name=dname, memory="off" if control else "on")
                entry["cells"].append(cell)
                msg = (f"{update:6s} memory {'off' if control else 'on ':3s} {fmt_len(L):>6s} {dname:6s} "
                       f"{cell['correct']:3d}/{n:<3d} = {cell['accuracy']:.2f}  ({cell['seconds']:.0f} s, "
                       f"{cell['tokens_per_second']:,} tok/s) e.g. {cell['examples'][0]}")
                (bar.write if bar else print)(msg)
            if bar:
                bar.close()
        if args.offsets and not args.lengths:
            onnx_path = export_onnx(ckpt, False)
            entry["alignment"] = []
            N = config.attn.segment_len
            for off in (int(o) for o in args.offsets.split(",")):
                if off >= N:
                    continue
                sess = open_session(onnx_path, args.samples, args.threads)
                cell = evaluate_cell(sess, 8 * train_len, 0.5, args.samples, args.seed, question_offset=off)
                cell.update(depth_name="middle", memory="on", question_offset=off)
                entry["alignment"].append(cell)
                print(f"{update:6s} alignment: question at offset {off:2d} of its segment "
                      f"({fmt_len(8 * train_len)}, middle): {cell['correct']}/{cell['samples']}")
        N = config.attn.segment_len
        if not args.lengths and N - 12 >= data.NEEDLE_LEN:
            # sanity of the control: with the passkey INSIDE the question's segment (question at offset
            # N-12, passkey right before it, the answer inside the segment too), local attention can answer
            entry["local_check"] = []
            for control in (False, True):
                sess = open_session(export_onnx(ckpt, control), args.samples, args.threads)
                cell = evaluate_cell(sess, 8 * train_len, 1.0, args.samples, args.seed, question_offset=N - 12)
                cell.update(depth_name="end", memory="off" if control else "on", question_offset=N - 12)
                entry["local_check"].append(cell)
                print(f"{update:6s} passkey inside the last segment, memory {cell['memory']}: "
                      f"{cell['correct']}/{cell['samples']}")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({"models": {update: entry}}, indent=1) + "\n")
    md = markdown(load_results(args.out_dir))
    (args.out_dir / "RESULTS.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Passkey accuracy through the EXPORTED ONNX model in ONNX Runtime, streamed segment by segment.

    python -m examples.passkey.evaluate --jobs 2             # both checkpoints, the full table
    python -m examples.passkey.evaluate --update delta --lengths 256,2048 --samples 20

For each checkpoint the model is exported twice with `infini_attention.export.export` (each
export self-checks the ONNX graph against the NumPy reference): as trained, and as the
memory-off control (every gate beta forced to -30, so sigmoid(beta) ~ 1e-13 and the output is
the local-attention branch). Each cell of the table streams ``samples`` documents, in batches of
``PIECE``, through an `InfiniSession`: the prompt is generated and fed chunk by chunk (ORT runs one
call per segment; the state is M, z and the pending keys/values, constant in size), then the answer
is decoded greedily, token by token (5 calls). A sample is correct when all 5 digits are.

``--jobs J`` streams the batches in J processes of ``--threads`` threads each (longest first);
the batches (`streaming.PIECE` documents) are the same whatever J, so every cell's answers are too.

Writes ``results/eval_{update}.json`` (every cell, with timings and the command) and
``results/RESULTS.md`` (from every ``eval_*.json`` there).
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
from .streaming import run_cells, score_cell, stream_docs

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
ONNX_DIR = HERE.parents[1] / "artifacts" / "passkey"  # artifacts/ is git-ignored
MILLION, TEN_MILLION = 1 << 20, 10 << 20


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


def cell_docs(length: int, depth: float, samples: int, seed: int, segment_len: int, question_offset: int | None = 0):
    """The documents of one cell: ``samples`` documents of ``length`` tokens (``<s>``, filler, the needle at
    ``depth``), then the question at ``question_offset`` of its segment (0: it opens a segment, the layout the
    model was mostly trained on; the prompt is then padded with filler to a segment boundary; None: no
    padding, the question lands where the document ends)."""
    rng = np.random.default_rng([seed, length, int(round(depth * 1000))])
    return data.make_docs(rng, samples, data.prompt_length(length, segment_len, question_offset), depth)


def evaluate_cell(session, length: int, depth: float, samples: int, seed: int, progress=None,
                  question_offset: int | None = 0) -> dict:
    """One cell streamed in one batch through ``session`` (see `cell_docs`)."""
    docs = cell_docs(length, depth, samples, seed, session.segment_len, question_offset)
    t0 = time.perf_counter()
    pred = stream_docs(session, docs, progress)
    return score_cell(docs, pred, time.perf_counter() - t0, length, session.segment_len)


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
    if length >= TEN_MILLION:
        return args.samples_10m
    if length >= MILLION:
        return args.samples_1m
    if length >= 100_000:
        return args.samples_128k
    return args.samples


def model_cells(update: str, ckpt: Path, args) -> tuple[dict, list]:
    """-> (the eval entry without its cells, the cells to stream for it)."""
    config, params, meta = load_checkpoint(ckpt)
    N, train_len = config.attn.segment_len, int(meta.get("train_length", 0)) or 256
    lengths = parse_lengths(args.lengths) if args.lengths else [train_len, 8 * train_len, 32768, 131072,
                                                                  MILLION, TEN_MILLION]
    entry = {"command": args.command, "seed": args.seed, "machine": args.machine, "memory_off_beta": MEMORY_OFF_BETA,
             "checkpoint": _checkpoint_name(ckpt), "train_length": train_len, "config": config.to_dict(),
             "state_bytes": state_bytes(config), "cells": []}
    if args.checks_only:  # keep the table, redo the checks below
        entry = json.loads((args.out_dir / f"eval_{update}.json").read_text())["models"][update]
        entry["checks_command"] = args.command
    onnx = {c: export_onnx(ckpt, c, args.onnx_dir) for c in (False, True)}
    for control in (False, True):
        entry[f"export_{'control' if control else 'model'}"] = EXPORT_NOTES[str(onnx[control])]
    cells = []

    def add(group, length, dname, control, offset, samples, text):
        docs = cell_docs(length, DEPTHS[dname], samples, args.seed, N, offset)
        labels = {"depth_name": dname, "memory": "off" if control else "on"}
        if group != "cells":
            labels["question_offset"] = offset
        cells.append({"update": update, "group": group, "onnx": onnx[control], "docs": docs, "length": length,
                      "N": N, "labels": labels, "describe": lambda r: f"{update:6s} {text}: {r['correct']}/"
                      f"{r['samples']} ({r['seconds']:.0f} s, {r['tokens_per_second']:,} tok/s) e.g. {r['examples'][0]}"})

    if not args.checks_only:
        for control in (False, True):
            for L in lengths:
                if (control and L > args.control_max_len) or samples_for(L, args) == 0:
                    continue
                for dname in args.depths.split(","):
                    add("cells", L, dname, control, 0, samples_for(L, args),
                        f"memory {'off' if control else 'on '} {fmt_len(L):>6s} {dname:6s}")
    if args.offsets:
        for off in (int(o) for o in args.offsets.split(",") if int(o) < N):
            add("alignment", 8 * train_len, "middle", False, off, args.samples,
                f"alignment: question at offset {off:2d} of its segment ({fmt_len(8 * train_len)}, middle)")
    if N - 12 >= data.NEEDLE_LEN:
        # sanity of the control: with the passkey INSIDE the question's segment (question at offset
        # N-12, passkey right before it, the answer inside the segment too), local attention can answer
        for control in (False, True):
            add("local_check", 8 * train_len, "end", control, N - 12, args.samples,
                f"passkey inside the last segment, memory {'off' if control else 'on'}")
    return entry, cells


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update", choices=["linear", "delta", "both"], default="both")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="evaluate this checkpoint (.safetensors, or an older .npz) instead (one update)")
    p.add_argument("--lengths", default=None, help="comma list, e.g. 256,2048,32K,128K,1M "
                   "(default: training length, 8x, 32K, 128K, 1M, 10M)")
    p.add_argument("--depths", default="start,middle,end")
    p.add_argument("--samples", type=int, default=50, help="documents per cell (lengths < 100K)")
    p.add_argument("--samples-128k", type=int, default=20)
    p.add_argument("--samples-1m", type=int, default=16)
    p.add_argument("--samples-10m", type=int, default=2, help="documents per cell at >= 10M tokens (0: skip)")
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
    p.add_argument("--jobs", type=int, default=1, help="processes streaming batches in parallel")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per process")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                   help="writes eval_{update}.json here, and RESULTS.md from every eval_*.json in it")
    p.add_argument("--onnx-dir", type=Path, default=ONNX_DIR, help="where the exports are written (cached)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        p.error(f"--jobs and --threads: expected integers >= 1, got {args.jobs} and {args.threads}")
    args.command = "python -m examples.passkey.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    args.machine = (f"{platform.machine()}, {args.jobs} process{'es' if args.jobs > 1 else ''} x "
                    f"{args.threads} thread{'s' if args.threads > 1 else ''}")
    if args.checkpoint is not None:
        ckpts = {load_checkpoint(args.checkpoint)[0].attn.update: args.checkpoint}
    else:
        ckpts = {u: checkpoint_path(u) for u in (["linear", "delta"] if args.update == "both" else [args.update])}
    entries, cells = {}, []
    for update, ckpt in ckpts.items():
        entries[update], more = model_cells(update, ckpt, args)
        cells += more
    t0 = time.perf_counter()
    run_cells(cells, args.jobs, args.threads, args.progress)
    print(f"streamed {sum(len(c['docs']) * c['length'] for c in cells):,} tokens in {time.perf_counter() - t0:.0f} s")
    for update, entry in entries.items():
        for group in ("cells", "alignment", "local_check"):
            done = [c["result"] for c in cells if c["update"] == update and c["group"] == group]
            if done or group != "cells":
                entry[group] = done
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / f"eval_{update}.json").write_text(json.dumps({"models": {update: entry}}, indent=1) + "\n")
    md = markdown(load_results(args.out_dir))
    (args.out_dir / "RESULTS.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

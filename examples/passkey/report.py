"""Evaluation results: ``results/eval_{update}.json`` read back and rendered as ``RESULTS.md``."""
from __future__ import annotations

import json
from pathlib import Path

DEPTHS = {"start": 0.0, "middle": 0.5, "end": 1.0}


def fmt_len(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def load_results(path) -> dict:
    """{"models": {update: entry}} merged from ``path`` (an eval_*.json file or a folder of them)."""
    path = Path(path)
    files = sorted(path.glob("eval_*.json")) if path.is_dir() else [path]
    models = {}
    for f in files:
        models.update(json.loads(f.read_text())["models"])
    order = {"linear": 0, "delta": 1}
    return {"models": dict(sorted(models.items(), key=lambda kv: order.get(kv[0], 2)))}


def markdown(results: dict) -> str:
    lines = ["# Passkey retrieval through ONNX Runtime", "",
             "Accuracy = all 5 digits right, greedy decoding, the documents streamed segment by segment through the",
             "exported ONNX model in ONNX Runtime. Context length = tokens of the document before the question (which",
             "opens the next segment). `memory off`: the same weights with every gate beta set to -30 (local attention",
             "only). Cells: accuracy (correct/samples).", ""]
    for update, entry in results["models"].items():
        cells = entry["cells"]
        lengths = sorted({c["length"] for c in cells})
        lines += [f"## {update} update (`{entry['checkpoint']}`, training length {entry['train_length']}, "
                  f"memory state {entry['state_bytes']:,} bytes)", "",
                  f"Produced by `{entry['command']}` (seed {entry['seed']}, {entry['machine']}; "
                  f"{sum(c['seconds'] for c in cells) / 60:.0f} process-minutes of streaming)"
                  + (f"; the two checks below by `{entry['checks_command']}`." if entry.get("checks_command") else "."),
                  "",
                  "| memory | depth | " + " | ".join(fmt_len(L) for L in lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        for mem in ("on", "off"):
            for dname in DEPTHS:
                row = []
                for L in lengths:
                    c = next((c for c in cells if c["length"] == L and c["depth_name"] == dname
                              and c["memory"] == mem), None)
                    row.append("" if c is None else f"{100 * c['accuracy']:.0f}% ({c['correct']}/{c['samples']})")
                if any(row):
                    lines.append(f"| {mem} | {dname} | " + " | ".join(row) + " |")
        lines.append("")
        if entry.get("local_check"):
            on, off = entry["local_check"]
            lines += [f"Control sanity ({fmt_len(on['length'])} tokens): with the passkey inside the question's own "
                      f"segment (question at offset {on['question_offset']}, passkey just before it, so local attention "
                      f"sees it): memory on {on['correct']}/{on['samples']}, memory off {off['correct']}/{off['samples']}: "
                      "the control is a working model that fails elsewhere only for want of memory.", ""]
        if entry.get("alignment"):
            al = entry["alignment"]
            lines += [f"Alignment check ({fmt_len(al[0]['length'])} tokens, middle depth, memory on): accuracy by the "
                      "question's offset in its segment (the answer crosses a segment boundary at offsets >= "
                      f"{entry['config']['attn']['segment_len'] - 4}):", "",
                      "| offset | " + " | ".join(str(c["question_offset"]) for c in al) + " |",
                      "|---|" + "---|" * len(al),
                      "| accuracy | " + " | ".join(f"{100 * c['accuracy']:.0f}%" for c in al) + " |", ""]
    return "\n".join(lines)

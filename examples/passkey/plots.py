"""The two figures of the passkey example (matplotlib, PNG).

    python -m examples.passkey.plots

- ``results/gates.png``: sigmoid(beta), the weight of the memory branch, per head and layer for
  each checkpoint (the paper's Figure 3: specialised heads near 0 (local) or 1 (memory), "mixer"
  heads near 0.5);
- ``results/accuracy_vs_length.png``: passkey accuracy against context length from
  ``results/eval_*.json``, per update rule and depth, with the memory-off control.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from infini_attention.export.passkey.model import checkpoint_path, gate_values, load_checkpoint

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def plot_gates(out: Path, updates=("linear", "delta")) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [(u, *load_checkpoint(checkpoint_path(u))[:2]) for u in updates if checkpoint_path(u).is_file()]
    widths = [c.attn.n_heads for _, c, _ in found]
    fig, axes = plt.subplots(1, len(found), figsize=(0.75 * sum(widths) + 2.5, 3.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    im = None
    for ax, (update, config, params) in zip(axes[0], found):
        g = gate_values(params, config)  # (layers, heads)
        im = ax.imshow(g, vmin=0, vmax=1, cmap="coolwarm", aspect="auto")
        for (i, h), v in np.ndenumerate(g):
            kind = "memory" if v > 0.9 else "local" if v < 0.1 else "mixer"
            ax.text(h, i, f"{v:.2f}\n{kind}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v - 0.5) > 0.3 else "black")
        ax.set_xticks(range(g.shape[1]), [f"h{h}" for h in range(g.shape[1])], fontsize=8)
        ax.set_yticks(range(g.shape[0]), [f"layer {i}" for i in range(g.shape[0])], fontsize=8)
        ax.set_title(f"{update} update", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="sigmoid(beta): weight of memory")
    fig.suptitle("Learned gates sigmoid(beta) per head and layer (0 = local attention only, 1 = memory only)",
                 fontsize=9, y=1.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_accuracy(eval_json: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import load_results

    results = load_results(eval_json)
    fig, ax = plt.subplots(figsize=(9, 4))
    colors = {"linear": "tab:blue", "delta": "tab:red"}
    markers = {"start": "o", "middle": "s", "end": "^"}
    for update, entry in results["models"].items():
        cells = entry["cells"]
        for mem, style in (("on", "-"), ("off", ":")):
            for dname, marker in markers.items():
                pts = sorted((c["length"], c["accuracy"]) for c in cells
                             if c["memory"] == mem and c["depth_name"] == dname)
                if not pts:
                    continue
                x, y = zip(*pts)
                label = f"{update}, {dname}" + (" (memory off)" if mem == "off" else "")
                ax.plot(x, y, style, marker=marker, color=colors.get(update, "k"), alpha=1 if mem == "on" else 0.5,
                        label=label, markersize=5)
        ax.axvline(entry["train_length"], color=colors.get(update, "k"), lw=0.8, alpha=0.4)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("context length (tokens before the answer; vertical lines: training length)")
    ax.set_ylabel("passkey accuracy (all 5 digits)")
    ax.set_title("Passkey retrieval, streamed through ONNX Runtime", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-json", type=Path, default=RESULTS_DIR, help="an eval_*.json file or a folder of them")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    print(plot_gates(args.out_dir / "gates.png"))
    if args.eval_json.is_file() or list(args.eval_json.glob("eval_*.json")):
        print(plot_accuracy(args.eval_json, args.out_dir / "accuracy_vs_length.png"))
    else:
        print(f"no {args.eval_json}: run `python -m examples.passkey.evaluate` first for the accuracy plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

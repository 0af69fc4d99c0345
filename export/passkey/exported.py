"""Export a passkey checkpoint to ONNX and check it twice (the demo and examples/passkey/evaluate.py).

`export_checked` runs `infini_attention.export.export` (its self-check: ONNX Runtime vs the NumPy
reference on random token ids, allowing for trained weights' conditioning), then ONNX Runtime vs
the PyTorch model on real passkey documents (`check_against_torch`): random ids never exercise
what the trained model does with a needle, so the second check is the one about this task.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import data

EXPORT_NOTES: dict[str, str] = {}  # onnx path -> how it was checked


def export_checked(config, params: dict, out: Path) -> Path:
    """Export ``params`` to ``out`` and check it both ways; EXPORT_NOTES[str(out)] records the checks."""
    from ..exporter import export

    r = export(config, {k: np.asarray(v, np.float64) for k, v in params.items()}, out)
    by_baseline = sum("PyTorch implementation" in line for line in r.checks)
    EXPORT_NOTES[str(out)] = (f"exporter self-check passed ({len(r.checks)} comparisons"
                              + (f", {by_baseline} within the float32 PyTorch baseline" if by_baseline else "")
                              + "); " + check_against_torch(config, params, out))
    return out


def check_against_torch(config, params: dict, onnx_path: Path, seed: int = 0) -> str:
    """ORT vs the PyTorch model (float32) on passkey documents: logits, and the greedy answers."""
    import torch

    from ...reference.tolerances import OUTPUT_TOLERANCES, compare, tolerance_for
    from ...torch_impl import InfiniTransformerLM

    N = config.attn.segment_len
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval()
    docs = data.make_docs(np.random.default_rng(seed), 4, data.prompt_length(8 * N, N), 0.25)
    prompt = np.stack([d.prompt() for d in docs])
    with torch.no_grad():
        want_logits, _ = model(torch.from_numpy(prompt))
        want, _ = model.generate(torch.from_numpy(prompt), data.N_DIGITS)
    sess = open_session(onnx_path, len(docs), 1)
    got_logits = sess.feed(prompt)
    got = sess.generate(data.N_DIGITS)
    r = compare("logits ORT vs PyTorch", got_logits, want_logits.numpy(), tolerance_for("float32", OUTPUT_TOLERANCES))
    if not r.ok or not np.array_equal(got, want[:, -data.N_DIGITS:].numpy()):
        raise RuntimeError(f"ONNX Runtime disagrees with PyTorch on passkey documents: {r.message()}; greedy answers "
                           f"{got.tolist()} vs {want[:, -data.N_DIGITS:].tolist()}")
    return (f"ONNX Runtime vs PyTorch float32 on {len(docs)} passkey documents of {prompt.shape[1]} tokens: "
            f"max |logit error| {r.max_abs:.1e}, {r.score:.3g}x the float32 tolerance; identical greedy answers")


def open_session(onnx_path: Path, batch: int, threads: int | None = None, provider: str = "cpu"):
    from ..session import InfiniSession

    return InfiniSession(onnx_path, provider=provider, batch=batch, intra_op_threads=threads)

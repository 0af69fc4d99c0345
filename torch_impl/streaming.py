"""Running a stream through a layer or LM in several calls (prefill + decode, chunked prefill)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def run_chunks(module, x: torch.Tensor, sizes: Sequence[int], state=None, **kw):
    """Feed x (B, T, ...) to `module` in consecutive calls of `sizes` tokens (summing to T).

    Works for InfiniAttention (x (B, T, D), one state) and InfiniTransformerLM
    (tokens (B, T), list of states). Returns (outputs concatenated over T, final state)."""
    if sum(sizes) != x.shape[1] or any(s < 0 for s in sizes):
        raise ValueError(f"sizes: expected non-negative chunk sizes summing to T={x.shape[1]}, got {list(sizes)}")
    outs, start = [], 0
    for size in sizes:
        y, state = module(x[:, start:start + size], state, **kw)
        outs.append(y)
        start += size
    return torch.cat(outs, dim=1), state

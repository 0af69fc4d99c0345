"""The stream loop, written once (SPEC.md §4.3): cutting a call into segment pieces, and feeding a stream in calls.

Every part of the project (reference, torch_impl's plain form, the ONNX session, the conformance
harness and adapters, the exporter's self-check) uses these two functions instead of its own loop.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence


def pieces(n: int, T: int, N: int) -> list[tuple[int, int]]:
    """Cut a call of T new tokens, arriving after n pending ones, into segment pieces (SPEC.md §4.3).

    Returns (start, stop) index pairs among the T new tokens; each piece continues the unfinished
    segment and ends on a segment boundary or at T, so ``n + (stop - start) <= N`` for every piece.
    """
    if not 0 <= n < N:
        raise ValueError(f"pending: expected 0 <= n < segment_len={N}, got {n}")
    out, start = [], 0
    while start < T:
        stop = min(T, start + N - n)
        out.append((start, stop))
        n, start = (n + stop - start) % N, stop
    return out


def check_split(split: Sequence[int], T: int) -> list[int]:
    """Chunk sizes: non-negative integers summing to T (zero-token calls allowed, SPEC.md §10)."""
    sizes = list(split)
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in sizes) or sum(sizes) != T:
        raise ValueError(f"split: expected non-negative chunk sizes summing to T={T}, got {sizes}")
    return sizes


def run_split(step: Callable, x, split: Sequence[int], state=None) -> tuple[list, object]:
    """Feed ``x`` (B, T, ...) to ``step(chunk, state) -> (out, state)`` in consecutive calls of ``split`` tokens.

    Returns (the list of each call's output, the state after the last call); the caller concatenates
    the outputs in its own framework.
    """
    outs, start = [], 0
    for size in check_split(split, x.shape[1]):
        out, state = step(x[:, start:start + size], state)
        outs.append(out)
        start += size
    return outs, state

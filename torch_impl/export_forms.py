"""The equations the ONNX export traces: ``naive.SPEC`` with swaps that change how, never what, is computed.

Each swap below equals the plain form wherever the form that uses it calls it (tests/test_export_forms.py
proves every combination against the reference, any split); together they cut the graph's nodes and work:

  rope_slices       RoPE tables read by slices (offsets n .. n+t-1, 0 .. L-1) instead of gathered by an
                    arange: one Slice node instead of Range + GatherND (SPEC.md §5.1).
  rope_op           RoPE as one op (``attention_op.rotary``, ONNX ``RotaryEmbedding`` from opset 23) instead of
                    slices, products and a concat per rotation (SPEC.md §5.1).
  kv_per_kv_head    keys/values are not repeated per query head for local attention: the Attention op maps
                    query head h to key/value head h // G itself (SPEC.md §3.2); the memory still expands.
  no_write          the memory write of a piece that completes no segment: nothing (SPEC.md §7: written when
                    a segment completes, never before); the plain form computes a write of 0 rows.
  sigma_by_where    sigma(x) = elu(x) + 1 as where(x > 0, x + 1, exp(x)), for a float64 state: ONNX Runtime has
                    no float64 Elu kernel (the same function; exp(x) is not rounded through exp(x) - 1).
  by_parts(f, P)    local attention of N queries in P groups of N/P, each against only the keys it can see
                    (the causal mask hides the rest): 5/8 of the score work for P = 4 (SPEC.md §5.2).

``norm_op`` (for the LM's norms, `lm_norms`): ``lm.rms_norm`` of a float32 model as torch's fused ``F.rms_norm``
(ONNX ``RMSNormalization`` from opset 23): one node for six, x / sqrt(mean(x^2) + eps) * w either way.

``equations(form, attention, wide_state)``: ``form`` is "inside" (a call that stays inside its segment: decoding),
"piece" (one that ends exactly on a boundary) or "chunk" (any other, ``chunk.chunk_forward``); ``attention``
"matmul" (MatMul/Softmax, any opset) or "op" (the opset-23 Attention op, ``attention_op.py``); ``wide_state``
True for a float64 M, z (the memory math runs in the state dtype, SPEC.md §11).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import lm, naive
from .attention_op import attention_op, rope_op

PARTS = 4  # query groups of a chunk's local attention (by_parts): 5/8 of the work, 4 ops per layer


def rope_slices(n, t, segments, N: int, device):
    """``naive.rope_positions`` as slices: queries at offsets n .. n+t-1, keys 0 .. n+t-1 (SPEC.md §5.1)."""
    return slice(n, n + t), slice(0, n + t)


def kv_per_kv_head(a: torch.Tensor, group_size: int, dim: int = 2) -> torch.Tensor:
    """``naive.expand_kv`` for the memory (dim 1: M, z per key/value head are repeated per query head), and
    the identity for local attention's keys/values (dim 2), whose Attention op reads head h // G itself."""
    return a if dim == 2 else naive.expand_kv(a, group_size, dim)


def sigma_by_where(x: torch.Tensor) -> torch.Tensor:
    """``functional.sigma`` (ELU + 1, Eq. 4) without an Elu node: x + 1 for x > 0, exp(x) otherwise."""
    return torch.where(x > 0, x + 1.0, torch.exp(x))


def no_write(eq, c, k, v, M, z):
    """``naive.memory_update`` of a piece that completes no segment (its k, v have 0 rows): M, z unchanged."""
    return M, z


def by_parts(local_attention, parts: int = PARTS):
    """``local_attention`` (q (B, t, H, dk), k (B, L, H', dk), v, scale, mask (t, L), queries the last t of the
    L positions) computed in ``parts`` groups of queries; group [a, b) sees keys [0, L - t + b) only. t must
    be a multiple of ``parts`` known when tracing (a chunk's blocks have t = N); otherwise one group."""
    def attention(q, k, v, scale, mask):
        t, L = q.shape[1], k.shape[1]
        if not isinstance(t, int) or t % parts or t < parts:
            return local_attention(q, k, v, scale, mask)
        size, outs = t // parts, []
        for j in range(parts):
            a, b = j * size, (j + 1) * size
            seen = L - t + b  # keys visible to the group's last query
            outs.append(local_attention(q[:, a:b], k[:, :seen], v[:, :seen], scale, mask[a:b, :seen]))
        return torch.cat(outs, dim=1)

    attention.parts = parts
    return attention


def equations(form: str, attention: str = "matmul", wide_state: bool = False) -> naive.Equations:
    """The swaps each exported form runs with (module docstring)."""
    if form not in ("inside", "piece", "chunk") or attention not in ("matmul", "op"):
        raise ValueError(f"form, attention: expected one of inside/piece/chunk and matmul/op, got {form!r}, "
                         f"{attention!r}")
    swaps = {"rope_positions": rope_slices}
    local = naive.local_attention
    if attention == "op":
        local, swaps["expand_kv"], swaps["rope"] = attention_op, kv_per_kv_head, rope_op
    swaps["local_attention"] = by_parts(local) if form == "chunk" else local
    if form == "inside":
        swaps["memory_update"] = no_write
    if wide_state:
        swaps["sigma"] = sigma_by_where
    return naive.SPEC.replace(**swaps)


_PLAIN_NORM = lm.rms_norm


def norm_op(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """``lm.rms_norm``; for float32 through ``F.rms_norm`` (lm.rms_norm upcasts half precision first, so others
    keep the plain form)."""
    if x.dtype != torch.float32:
        return _PLAIN_NORM(x, w, eps)
    return F.rms_norm(x, (x.shape[-1],), w, eps)


@contextmanager
def lm_norms(norm):
    """Inside, the LM's RMS norms (``lm.rms_norm``, read by its blocks at call time) are ``norm``."""
    lm.rms_norm = norm
    try:
        yield
    finally:
        lm.rms_norm = _PLAIN_NORM

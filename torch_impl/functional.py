"""Stateless tensor helpers for Infini-attention: sigma, RoPE, local attention, memory.

Layout conventions used throughout (the module docstrings repeat them):
  per-token projections    (B, T, H, d)      as produced by x @ w, viewed per head
  SDPA operands            (batch, H, L, d)  batch = B or B*S (block layout)
  memory                   M (B, Hkv, dk, dv), z (B, Hkv, dk)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigma(x: torch.Tensor) -> torch.Tensor:
    """ELU + 1: the positive feature map used for memory reads and writes."""
    return F.elu(x) + 1.0


def memory_dtype(dtype: torch.dtype, state_dtype: torch.dtype | None = None) -> torch.dtype:
    """dtype of M and z: never below float32, because z sums sigma(k) over the whole stream and
    overflows fp16 (and loses all precision in bf16). ``state_dtype=torch.float64`` keeps float64
    accumulators whatever the compute dtype: float32 z stops absorbing a segment's increment once it
    falls below half an ulp (around 1e8-1e10 tokens, by model), float64 only past ~1e15 (SPEC.md §11)."""
    if state_dtype is not None:
        return state_dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- RoPE


def rope_tables(
    length: int, dim: int, theta: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (length, dim // 2) for positions 0..length-1.

    Angles are computed in float64 and only then rounded: pos * inv_freq reaches
    ~N radians, and float32 angles would be off by ~N * 6e-8."""
    j = torch.arange(dim // 2, dtype=torch.float64, device=device)
    inv_freq = theta ** (-2.0 * j / dim)  # (dim/2,)
    pos = torch.arange(length, dtype=torch.float64, device=device)
    ang = pos[:, None] * inv_freq[None, :]  # (length, dim/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate x (..., L, H, d) by per-position angles; cos/sin are (L, d/2).

    'half' pairs dims (j, j + d/2) (Llama rotate_half); 'interleaved' pairs
    (2j, 2j+1). Each pair (a, b) becomes (a cos - b sin, a sin + b cos)."""
    cos = cos[:, None, :]  # (L, 1, d/2): broadcast over heads
    sin = sin[:, None, :]
    half = x.shape[-1] // 2
    if style == "half":
        a, b = x[..., :half], x[..., half:]  # (..., L, H, d/2) each
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # (..., L, H, d/2) each
    # stack on a new last axis then flatten: (..., d/2, 2) -> (..., d) restores the pairing
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


# ------------------------------------------------------------------ local attention


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal softmax attention inside one segment piece.

    q (Bq, Lq, H, dk), k (Bq, Lk, Hkv, dk), v (Bq, Lk, Hkv, dv), returns (Bq, Lq, H, dv).
    The queries are the last Lq of the Lk positions: query i sits at offset
    Lk - Lq + i and attends keys j <= Lk - Lq + i."""
    lq, lk = q.shape[1], k.shape[1]
    q_offset = lk - lq
    h, hkv = q.shape[2], k.shape[2]
    dk, dv = q.shape[-1], v.shape[-1]
    # SDPA wants heads before positions: transposed views, no copies.
    qt = q.transpose(1, 2)  # (Bq, H, Lq, dk)
    kt = k.transpose(1, 2)  # (Bq, Hkv, Lk, dk)
    vt = v.transpose(1, 2)  # (Bq, Hkv, Lk, dv)
    if dk != dv:
        # The fused CPU/GPU kernels need one head dim; zero-padding the shorter side
        # changes neither q.k nor the weighted sum of v (scale is passed explicitly).
        d = max(dk, dv)
        qt, kt, vt = (F.pad(t, (0, d - t.shape[-1])) for t in (qt, kt, vt))
    if lq == lk and q_offset == 0:
        mask, causal = None, lq > 1
    elif lq == 1:
        mask, causal = None, False  # a single last query sees every key
    else:
        # Bottom-right aligned causal mask (SDPA's is_causal is top-left aligned).
        # At most (N, N) booleans: only the segment holding pending keys uses it.
        rows = torch.arange(lq, device=q.device)[:, None] + q_offset  # (Lq, 1)
        mask = torch.arange(lk, device=q.device)[None, :] <= rows  # (Lq, Lk)
        causal = False
    out = F.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=h != hkv
    )  # (Bq, H, Lq, max(dk, dv))
    return out[..., :dv].transpose(1, 2)  # (Bq, Lq, H, dv)


# --------------------------------------------------------------------------- memory


def gated_output(
    a_dot: torch.Tensor,
    w_dot: torch.Tensor,
    sq: torch.Tensor,
    m: torch.Tensor,
    z: torch.Tensor,
    w_mem: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A = w_mem * A_mem + w_dot * A_dot, with A_mem = sigma(q) M / max(sigma(q) . z, eps).

    a_dot (B, S, L, H, dv) local attention, sq (B, S, L, H, dk) = sigma(q) in memory dtype,
    m (B, S, Hkv, dk, dv), z (B, S, Hkv, dk): memory before each of the S segments,
    w_mem, w_dot (S, H): per-segment, per-head gate weights. Returns (B, S, L, H, dv),
    written into `out` when given (no autograd). Query head h reads kv head h // (H // Hkv).

    w_mem is folded into M (dk x dv per head, tiny) and z rides along as an extra value
    column, so one batched matmul gives numerator and denominator, and the gate costs
    two passes over the output: out = w_dot * a_dot, then out += num / den."""
    b, s, l, h, dk = sq.shape
    hkv, dv = m.shape[2], m.shape[-1]
    if h != hkv:  # per query head from here on: (B, S, H, ...) (tiny tensors)
        m, z = m.repeat_interleave(h // hkv, dim=2), z.repeat_interleave(h // hkv, dim=2)
    aug = torch.cat((m * w_mem[None, :, :, None, None], z[..., None]), dim=-1)  # (B, S, H, dk, dv+1)
    read = torch.einsum("bslhd,bshdv->bslhv", sq, aug)  # (B, S, L, H, dv+1)
    num, den = read[..., :dv], read[..., dv:].clamp_min(eps)  # (B, S, L, H, dv), (B, S, L, H, 1)
    wd = w_dot[None, :, None, :, None]  # (1, S, 1, H, 1)
    if out is None:
        return torch.addcdiv(a_dot * wd, num, den).to(a_dot.dtype)
    torch.mul(a_dot, wd, out=out)
    return out.addcdiv_(num, den)


def linear_updates(sk: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment linear-rule increments.

    sk (B, Hkv, C, N, dk) = sigma(K), v (B, Hkv, C, N, dv) -> dM (B, Hkv, C, dk, dv),
    dz (B, Hkv, C, dk)."""
    return sk.transpose(-1, -2) @ v, sk.sum(dim=-2)


def delta_update(
    m: torch.Tensor, z: torch.Tensor, sk: torch.Tensor, v: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One delta-rule write: M + sigma(K)^T (V - sigma(K) M / max(sigma(K) z, eps)).

    m (B, Hkv, dk, dv), z (B, Hkv, dk), sk (B, Hkv, N, dk), v (B, Hkv, N, dv)."""
    retrieved = (sk @ m) / (sk @ z[..., None]).clamp_min(eps)  # (B, Hkv, N, dv)
    return m + sk.transpose(-1, -2) @ (v - retrieved), z + sk.sum(dim=-2)

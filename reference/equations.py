"""One pure float64 function per equation of SPEC.md.

Shape names: B batch, T tokens in the piece, H query heads, Hkv key/value heads,
dk key dim, dv value dim, N segment length, D model width.
"""
from __future__ import annotations

import numpy as np


def project(x: np.ndarray, w: np.ndarray, n_heads: int, d_head: int) -> np.ndarray:
    """Eq. 1 (SPEC.md §3): ``q = x @ wq`` split into heads; head h owns columns ``h*d:(h+1)*d``.

    x (B, T, D), w (D, n_heads*d_head) -> (B, T, n_heads, d_head).
    """
    B, T, _ = x.shape
    return (x @ w).reshape(B, T, n_heads, d_head)  # (B, T, n_heads, d_head)


def expand_kv(t: np.ndarray, group_size: int) -> np.ndarray:
    """SPEC.md §3: query head h reads key/value head ``h // group_size`` (``repeat_interleave``).

    t (B, T, Hkv, d) -> (B, T, Hkv*group_size, d).
    """
    return np.repeat(t, group_size, axis=2)  # (B, T, H, d)


def rope(x: np.ndarray, positions: np.ndarray, theta: float, style: str) -> np.ndarray:
    """Eq. 2 (SPEC.md §5.1): rotate pairs of dims by ``pos * theta**(-2j/d)``, j = 0 .. d/2-1.

    ``style="half"`` pairs (j, j + d/2) (Llama); ``"interleaved"`` pairs (2j, 2j+1) (GPT-J).
    x (B, T, n, d), positions (T,) offsets within the segment -> (B, T, n, d).
    """
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    angle = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]  # (1, T, 1, d/2)
    if style == "half":
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
    return out


def local_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Eq. 3 (SPEC.md §5.2): ``A_dot = softmax(scale * q k^T + causal mask) v`` inside one segment.

    The Tq queries are the *last* Tq of the Tk keys (offsets Tk-Tq .. Tk-1), so query i
    sees keys 0 .. Tk-Tq+i. The diagonal is always visible: no row is fully masked.
    q (B, Tq, H, dk), k (B, Tk, H, dk), v (B, Tk, H, dv) -> (B, Tq, H, dv).
    """
    Tq, Tk = q.shape[1], k.shape[1]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, H, Tq, Tk)
    visible = np.arange(Tk)[None, :] <= (Tk - Tq + np.arange(Tq))[:, None]  # (Tq, Tk)
    scores = np.where(visible, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)  # (B, Tq, H, dv)


def sigma(x: np.ndarray) -> np.ndarray:
    """Eq. 4 (SPEC.md §6): ``sigma(x) = elu(x) + 1`` (x + 1 for x > 0, exp(x) otherwise); always > 0."""
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def memory_read(q: np.ndarray, M: np.ndarray, z: np.ndarray, eps: float, group_size: int) -> np.ndarray:
    """Eq. 5 (SPEC.md §6): ``A_mem = sigma(q) M / max(sigma(q) . z, eps)``, q before RoPE.

    With M = 0 and z = 0 (no segment written yet) this is exactly 0.
    q (B, T, H, dk), M (B, Hkv, dk, dv), z (B, Hkv, dk) -> (B, T, H, dv).
    """
    sq = sigma(q)
    M_h = np.repeat(M, group_size, axis=1)  # (B, H, dk, dv)
    z_h = np.repeat(z, group_size, axis=1)  # (B, H, dk)
    num = np.einsum("bthk,bhkv->bthv", sq, M_h)  # (B, T, H, dv)
    den = np.einsum("bthk,bhk->bth", sq, z_h)[..., None]  # (B, T, H, 1)
    return num / np.maximum(den, eps)


def memory_update_linear(k: np.ndarray, v: np.ndarray, M: np.ndarray, z: np.ndarray):
    """Eq. 6 (SPEC.md §7.1): ``M += sigma(K)^T V``, ``z += sum_t sigma(K_t)``, K before RoPE.

    k (B, N, Hkv, dk), v (B, N, Hkv, dv), M (B, Hkv, dk, dv), z (B, Hkv, dk) -> (M, z).
    """
    sk = sigma(k)
    return M + np.einsum("bthk,bthv->bhkv", sk, v), z + sk.sum(axis=1)


def memory_update_delta(k: np.ndarray, v: np.ndarray, M: np.ndarray, z: np.ndarray, eps: float):
    """Eq. 7 (SPEC.md §7.2): ``M += sigma(K)^T (V - sigma(K) M / max(sigma(K) . z, eps))``; z as Eq. 6.

    The subtracted term is what the memory already returns for these keys (Eq. 5 with
    q = K); on the first segment it is 0, so the rule reduces to Eq. 6.
    k (B, N, Hkv, dk), v (B, N, Hkv, dv), M (B, Hkv, dk, dv), z (B, Hkv, dk) -> (M, z).
    """
    retrieved = memory_read(k, M, z, eps, group_size=1)  # (B, N, Hkv, dv)
    sk = sigma(k)
    return M + np.einsum("bthk,bthv->bhkv", sk, v - retrieved), z + sk.sum(axis=1)


def gate(a_mem: np.ndarray, a_dot: np.ndarray, beta: np.ndarray, gate_on: str) -> np.ndarray:
    """Eq. 8 (SPEC.md §8): ``A = s*A_mem + (1-s)*A_dot`` with ``s = sigmoid(beta_h)``.

    ``gate_on="local"`` swaps the branches: ``A = s*A_dot + (1-s)*A_mem``.
    a_mem, a_dot (B, T, H, dv), beta (H,) -> (B, T, H, dv).
    """
    s = (1.0 / (1.0 + np.exp(-beta)))[None, None, :, None]  # (1, 1, H, 1)
    if gate_on == "local":
        a_mem, a_dot = a_dot, a_mem
    return s * a_mem + (1.0 - s) * a_dot


def output_projection(a: np.ndarray, wo: np.ndarray) -> np.ndarray:
    """Eq. 9 (SPEC.md §8): ``y = concat_h(A) @ wo``. a (B, T, H, dv), wo (H*dv, D) -> (B, T, D)."""
    B, T, H, dv = a.shape
    return a.reshape(B, T, H * dv) @ wo  # (B, T, H*dv) @ (H*dv, D)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Eq. 10 (SPEC.md §9): ``x / sqrt(mean(x^2) + eps) * w`` over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def swiglu(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """Eq. 11 (SPEC.md §9): ``(silu(x w_gate) * (x w_up)) w_down``, silu(a) = a * sigmoid(a)."""
    g = x @ w_gate
    return (g / (1.0 + np.exp(-g)) * (x @ w_up)) @ w_down

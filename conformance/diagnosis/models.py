"""Variants of the spec, in NumPy, for one head, one batch row and one call of whole segments: the
hypotheses the diagnosis fits to an implementation's outputs with a gate at a limit.

``memory_path`` is the output with the gate fully on memory (the memory read alone, SPEC.md §6-§7) and
``local_path`` with it fully local (§5), each with named departures switched on; a departure set that
reproduces what the implementation returns, where the spec does not, is evidence for those departures.
"""
from __future__ import annotations

import itertools

import numpy as np

from ...reference import equations as E
from ..harness import round_to

# Departures of the memory path (names are deviation classes); "rope_on_memory" takes the RoPE positions.
MEMORY_DEPARTURES = ("sigma_no_plus_one", "z_init_nonzero", "z_not_accumulated", "delta_ignored",
                     "update_before_read", "rope_on_memory", "rope_on_memory@stream", "bf16_state", "no_eps")
LOCAL_DEPARTURES = ("scale_d_model", "causal_off_by_one")


def _sigma(a, plus_one: bool):
    return E.sigma(a) if plus_one else np.where(a > 0, a, np.exp(np.minimum(a, 0.0)) - 1.0)


def memory_path(config, params, x, departures=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y (1, T, D) of the memory branch alone (segment 0 reads an empty memory), and the final M, z (1, 1, ...)."""
    c, d = config, set(departures)
    N, T = c.segment_len, x.shape[1]
    q, k, v = x[0] @ params["wq"], x[0] @ params["wk"], x[0] @ params["wv"]  # (T, dk), (T, dk), (T, dv)
    plus = "sigma_no_plus_one" not in d
    M = np.zeros((c.d_key, c.d_value))
    z = np.full(c.d_key, 1.0 if "z_init_nonzero" in d else 0.0)

    def read(qq, M, z):
        sq = _sigma(qq, plus)
        den = sq @ z
        den = den if "no_eps" in d else np.maximum(den, c.eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (sq @ M) / den[:, None]

    ys = []
    for s in range(T // N):
        seg = slice(s * N, (s + 1) * N)
        qq, kk, vv = q[seg], k[seg], v[seg]
        rot = "rope_on_memory" in d or "rope_on_memory@stream" in d
        if rot and c.rope_theta is not None:
            pos = np.arange(N) + (s * N if "rope_on_memory@stream" in d else 0)
            qq = E.rope(qq[None, :, None], pos, c.rope_theta, c.rope_style)[0, :, 0]
            kk = E.rope(kk[None, :, None], pos, c.rope_theta, c.rope_style)[0, :, 0]
        sk = _sigma(kk, plus)
        if c.update == "delta" and "delta_ignored" not in d:
            vv = vv - read(kk, M, z)
        M2, inc = M + sk.T @ vv, sk.sum(axis=0)
        z2 = inc if "z_not_accumulated" in d else z + inc
        if "bf16_state" in d:
            M2, z2 = round_to(M2, "bfloat16"), round_to(z2, "bfloat16")
        ys.append(read(qq, *((M2, z2) if "update_before_read" in d else (M, z))) @ params["wo"])
        M, z = M2, z2
    return np.concatenate(ys)[None], M[None, None], z[None, None]


def local_path(config, params, x, departures=()) -> np.ndarray:
    """y (1, T, D) of local attention alone (gate fully local), one head, one call."""
    c, d = config, set(departures)
    N, T = c.segment_len, x.shape[1]
    scale = 1.0 / np.sqrt(c.d_model) if "scale_d_model" in d and c.scale is None else c.attn_scale
    shift = 1 if "causal_off_by_one" in d else 0
    q, k, v = x[0] @ params["wq"], x[0] @ params["wk"], x[0] @ params["wv"]
    ys = []
    for s in range((T + N - 1) // N):
        seg = slice(s * N, min(T, (s + 1) * N))
        qq, kk, vv = q[seg], k[seg], v[seg]
        if c.rope_theta is not None:
            pos = np.arange(qq.shape[0])
            qq = E.rope(qq[None, :, None], pos, c.rope_theta, c.rope_style)[0, :, 0]
            kk = E.rope(kk[None, :, None], pos, c.rope_theta, c.rope_style)[0, :, 0]
        L = qq.shape[0]
        scores = qq @ kk.T * scale
        visible = np.arange(L)[None, :] <= np.arange(L)[:, None] + shift
        scores = np.where(visible, scores, -np.inf)
        w = np.exp(scores - scores.max(axis=1, keepdims=True))
        ys.append((w / w.sum(axis=1, keepdims=True)) @ vv @ params["wo"])
    return np.concatenate(ys)[None]


def candidates(names, size: int):
    """Every set of at most ``size`` departures (the empty set first)."""
    for n in range(size + 1):
        yield from itertools.combinations(names, n)

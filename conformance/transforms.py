"""Parameter transformations under which the spec's output is known: what the self-comparing properties
and the diagnosis' probes feed an implementation (SPEC.md §3.1, §3.2, §8.1). Pure NumPy; the printed
repros import them too.
"""
from __future__ import annotations

import numpy as np

from ..reference import InfiniConfig

__all__ = ["head_permutation", "permute_heads", "expand_kv_heads", "interleaved_to_blocks", "strided_permutation",
           "gate_limit", "local_weight"]


def head_permutation(config: InfiniConfig, seed: int) -> tuple[list[int], list[int]]:
    """(query-head order, key/value-head order), never the identity when there are 2+ heads: key/value
    heads are permuted, each group's query heads move with their key/value head and are permuted within it."""
    rng = np.random.default_rng(seed)
    Hkv, G = config.n_kv_heads, config.group_size
    kv = [int(i) for i in rng.permutation(Hkv)]
    within = [[int(i) for i in rng.permutation(G)] for _ in range(Hkv)]
    q = [kv[g] * G + within[g][i] for g in range(Hkv) for i in range(G)]
    if q == list(range(config.n_heads)) and config.n_heads > 1:  # roll instead of the identity
        if Hkv > 1:
            kv = kv[1:] + kv[:1]
        else:
            within = [w[1:] + w[:1] for w in within]
        q = [kv[g] * G + within[g][i] for g in range(Hkv) for i in range(G)]
    return q, kv


def _blocks(w: np.ndarray, order: list[int], width: int, axis: int) -> np.ndarray:
    """Blocks of ``width`` columns (axis 1) or rows (axis 0) taken in ``order`` (a block may repeat)."""
    n, m = w.shape[axis] // width, len(order)
    if axis == 1:
        return w.reshape(w.shape[0], n, width)[:, order].reshape(w.shape[0], m * width)
    return w.reshape(n, width, w.shape[1])[order].reshape(m * width, w.shape[1])


def permute_heads(config: InfiniConfig, params: dict, q_order: list[int], kv_order: list[int]) -> dict:
    """The same layer with its heads renumbered (SPEC.md §3.1-§3.2): head j of the result is head
    q_order[j] of ``params`` (columns of wq, rows of wo, beta), key/value head g is kv_order[g]. The
    spec's y is unchanged."""
    c = config
    return {"wq": _blocks(params["wq"], q_order, c.d_key, 1), "wk": _blocks(params["wk"], kv_order, c.d_key, 1),
            "wv": _blocks(params["wv"], kv_order, c.d_value, 1), "wo": _blocks(params["wo"], q_order, c.d_value, 0),
            "beta": np.asarray(params["beta"])[q_order].copy()}


def expand_kv_heads(config: InfiniConfig, params: dict, mapping: str = "h // G") -> tuple[InfiniConfig, dict]:
    """The multi-head config (n_kv_heads = n_heads) whose key/value head h is the original's g(h) (SPEC.md §3.2:
    ``h // G``; ``"h % Hkv"`` is the wrong mapping, for the hint). Under the spec its y equals the original's."""
    c = config
    G, Hkv = c.group_size, c.n_kv_heads
    g = [h // G for h in range(c.n_heads)] if mapping == "h // G" else [h % Hkv for h in range(c.n_heads)]
    mha = c.replace(n_kv_heads=c.n_heads)
    out = dict(params)
    out["wk"] = _blocks(params["wk"], g, c.d_key, 1)
    out["wv"] = _blocks(params["wv"], g, c.d_value, 1)
    return mha, out


def interleaved_to_blocks(config: InfiniConfig, params: dict) -> dict:
    """Parameters that an implementation reading head h as the strided columns h::H (a (d, H) reshape) sees as
    §3.1's blocks: its outputs on these equal a correct layout's on ``params`` (the diagnosis' correction)."""
    c = config

    def cols(w, n, d):  # block column h*d + j moves to strided column j*n + h
        return w.reshape(w.shape[0], n, d).transpose(0, 2, 1).reshape(w.shape[0], n * d)

    return {"wq": cols(params["wq"], c.n_heads, c.d_key), "wk": cols(params["wk"], c.n_kv_heads, c.d_key),
            "wv": cols(params["wv"], c.n_kv_heads, c.d_value),
            "wo": params["wo"].reshape(c.n_heads, c.d_value, -1).transpose(1, 0, 2).reshape(c.n_heads * c.d_value, -1),
            "beta": np.asarray(params["beta"]).copy()}


def strided_permutation(config: InfiniConfig, params: dict, q_order: list[int], kv_order: list[int]) -> dict:
    """``permute_heads`` for an implementation whose heads are the strided columns h::H: invariant there."""
    c = config

    def cols(w, order, n, d):  # strided column j*n + h -> j*n + order[h]
        return w.reshape(w.shape[0], d, n)[:, :, order].reshape(w.shape[0], n * d)

    return {"wq": cols(params["wq"], q_order, c.n_heads, c.d_key),
            "wk": cols(params["wk"], kv_order, c.n_kv_heads, c.d_key),
            "wv": cols(params["wv"], kv_order, c.n_kv_heads, c.d_value),
            "wo": params["wo"].reshape(c.d_value, c.n_heads, -1)[:, q_order].reshape(c.n_heads * c.d_value, -1),
            "beta": np.asarray(params["beta"])[q_order].copy()}


def gate_limit(config: InfiniConfig, branch: str, big: float = 60.0) -> float:
    """The beta that puts sigmoid(beta) = 1 on ``branch`` ("memory" or "local") under config.gate_on (§8.2):
    sigmoid(-60) = 8.8e-27, so even a memory read floored at eps (a read of ~1e6) leaks nothing measurable."""
    return big if config.gate_on == branch else -big


def local_weight(config: InfiniConfig, beta) -> np.ndarray:
    """The weight of the local branch A_dot per head (SPEC.md §8.1-§8.2): 1 - sigmoid(beta) under
    gate_on="memory", sigmoid(beta) under "local"."""
    s = 1.0 / (1.0 + np.exp(-np.asarray(beta, dtype=np.float64)))
    return 1.0 - s if config.gate_on == "memory" else s

"""One Infini-attention layer over a stream, call by call (SPEC.md §4-§8)."""
from __future__ import annotations

import numpy as np

from . import equations as eq
from .config import InfiniConfig
from .shapes import layer_param_shapes
from .state import InfiniState, init_state
from .streaming import pieces
from .validate import check_params, check_state, check_x


def init_params(config: InfiniConfig, seed: int = 0, beta_init: float = 0.0) -> dict[str, np.ndarray]:
    """Random parameters, ``N(0, 1/fan_in)`` weights; ``beta = beta_init`` (0: an even gate, SPEC.md §8)."""
    rng = np.random.default_rng(seed)
    params = {n: rng.standard_normal(s) / np.sqrt(s[0]) for n, s in layer_param_shapes(config).items() if n != "beta"}
    params["beta"] = np.full((config.n_heads,), float(beta_init))
    return params


def forward(config: InfiniConfig, params: dict, x, state: InfiniState | None = None):
    """Run the next T tokens of a stream: ``x (B, T, D) -> (y (B, T, D), new state)`` (SPEC.md §4).

    The call is cut at segment boundaries into pieces; each piece continues the unfinished
    segment, and a segment that completes is written to memory (SPEC.md §4.3). So the result
    does not depend on how the stream is split into calls. The input state is not modified.
    """
    p = check_params(config, params)
    x = check_x(config, x)
    state = init_state(config, x.shape[0]) if state is None else check_state(config, state, x.shape[0])
    outputs = []
    for a, b in pieces(state.pending, x.shape[1], config.segment_len):
        y, state = _segment_piece(config, p, x[:, a:b], state)
        outputs.append(y)
    y = np.concatenate(outputs, axis=1) if outputs else np.zeros((x.shape[0], 0, config.d_model))
    return y, state


def _segment_piece(c: InfiniConfig, p: dict, x: np.ndarray, state: InfiniState):
    """Tokens at offsets n .. n+t-1 of one segment, where n = state.pending and n + t <= N."""
    n, t = state.pending, x.shape[1]
    q = eq.project(x, p["wq"], c.n_heads, c.d_key)  # (B, t, H, dk)
    k_new = eq.project(x, p["wk"], c.n_kv_heads, c.d_key)  # (B, t, Hkv, dk)
    v_new = eq.project(x, p["wv"], c.n_kv_heads, c.d_value)  # (B, t, Hkv, dv)
    k = np.concatenate([state.k.transpose(0, 2, 1, 3), k_new], axis=1)  # (B, n+t, Hkv, dk)
    v = np.concatenate([state.v.transpose(0, 2, 1, 3), v_new], axis=1)  # (B, n+t, Hkv, dv)

    q_loc, k_loc = q, k
    if c.rope_theta is not None:  # positions are offsets within the segment (SPEC.md §5.1)
        q_loc = eq.rope(q, np.arange(n, n + t), c.rope_theta, c.rope_style)
        k_loc = eq.rope(k, np.arange(n + t), c.rope_theta, c.rope_style)
    a_dot = eq.local_attention(q_loc, eq.expand_kv(k_loc, c.group_size),
                               eq.expand_kv(v, c.group_size), c.attn_scale)  # (B, t, H, dv)
    if c.first_segment == "local_only" and state.segments == 0:
        a = a_dot  # SPEC.md §8.2: the stream's first segment is plain local attention
    else:  # memory as it stood before this segment; exactly 0 on the first (SPEC.md §6)
        a_mem = eq.memory_read(q, state.M, state.z, c.eps, c.group_size)
        a = eq.gate(a_mem, a_dot, p["beta"], c.gate_on)
    y = eq.output_projection(a, p["wo"])

    if n + t < c.segment_len:  # unfinished: keep keys and values, write nothing (SPEC.md §7)
        return y, InfiniState(state.M, state.z, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                              state.segments)
    if c.update == "delta":
        M, z = eq.memory_update_delta(k, v, state.M, state.z, c.eps)
    else:
        M, z = eq.memory_update_linear(k, v, state.M, state.z)
    empty_k = np.zeros(k.shape[:1] + (c.n_kv_heads, 0, c.d_key))
    empty_v = np.zeros(k.shape[:1] + (c.n_kv_heads, 0, c.d_value))
    return y, InfiniState(M, z, empty_k, empty_v, state.segments + 1)

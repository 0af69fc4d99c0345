"""The decoding form: a call that stays inside its segment (n + t < N), in the state's layout, for the ONNX export.

It is ``naive.segment_piece`` for such a call (no segment completes, so nothing is written: SPEC.md §7) with
the keys and values kept as the state holds them, (B, Hkv, L, d), and local attention as one Attention op
whose past inputs are the pending keys/values (``attention_op``): the pending keys (before RoPE, §5.1) and
the new ones are rotated each at their own offsets, so no slice of the timeline is needed, and the state out
is the state in with the new keys and values appended (the values as the Attention op's own ``present_value``).
Every node saved is time saved when decoding, where ONNX Runtime spends more per node than per flop.
tests/test_export_forms.py proves it equal to the reference.
"""
from __future__ import annotations

import torch

from infini_attention.reference import InfiniConfig

from . import naive
from .attention_op import attend_past_values, rope_heads_first
from .state import TorchInfiniState


def inside_piece(c: InfiniConfig, p: dict, x: torch.Tensor, st: TorchInfiniState, eq: naive.Equations = naive.SPEC):
    """x (B, t, D) after st's n pending tokens with n + t < N -> (y (B, t, D), state with n + t pending)."""
    H, Hkv, G, dk, dv = c.n_heads, c.n_kv_heads, c.group_size, c.d_key, c.d_value
    n, L = st.k.shape[2], st.k.shape[2] + x.shape[1]
    q = eq.split_heads(x @ p["wq"], H, dk)  # (B, t, H, dk)
    k_new = eq.split_heads(x @ p["wk"], Hkv, dk).transpose(1, 2)  # (B, Hkv, t, dk)
    v_new = eq.split_heads(x @ p["wv"], Hkv, dv).transpose(1, 2)  # (B, Hkv, t, dv)
    k_past, v_past = st.k.to(x.dtype), st.v.to(x.dtype)  # (B, Hkv, n, d)
    q_att, k_att, kp_att = q.transpose(1, 2), k_new, k_past  # (B, H, t, dk), (B, Hkv, ., dk)
    if c.rope_theta is not None:  # offsets in the segment: queries and new keys n .. L-1, pending keys 0 .. n-1
        q_att, k_att = rope_heads_first(q_att, n, L, c), rope_heads_first(k_new, n, L, c)
        kp_att = rope_heads_first(k_past, 0, n, c)
    # The gate runs heads first, the Attention op's layout: memory_read's own last transpose then cancels
    # against the one below, so the two branches meet without moving either (one Transpose less per layer).
    scale = float(eq.attn_scale(c))
    a_dot, v = attend_past_values(q_att, kp_att, v_past, k_att, v_new, scale)  # (B, H, t, dv), (B, Hkv, L, dv)
    a_mem = eq.memory_read(eq, q, st.M, st.z, c.eps, G).transpose(1, 2)  # (B, H, t, dv): memory before the segment
    w_mem, w_dot = eq.gate_weights(c, p["beta"], st.segments, st.M.dtype)  # (H,)
    a = eq.gate(a_mem, a_dot, w_mem[:, None], w_dot[:, None]).transpose(1, 2)  # weights (H, 1, 1) -> (B, t, H, dv)
    y = eq.merge_heads(a.to(x.dtype)) @ p["wo"]  # (B, t, D)
    k = torch.cat((k_past, k_new), dim=2)  # (B, Hkv, L, dk): the pending keys after the call, before RoPE
    return y, TorchInfiniState(st.M, st.z, k, v, st.segments)

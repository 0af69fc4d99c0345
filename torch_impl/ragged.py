"""Many streams in one call, each at its own position (SPEC.md §4.4): every batch row is its own stream.

``naive.segment_piece`` runs one piece of one segment for a batch whose rows share one position. Here each
row ``b`` has its own pending length ``n_b``, completed-segment count and number of new tokens ``t_b`` in the
call (rows padded to the call's longest), with ``n_b + t_b <= N``: every row runs one piece of its own
segment (``reference.pieces`` per row; `row_lengths` cuts longer inputs into several calls). The pending
keys and values sit in a fixed ``N``-slot buffer per row, slots ``[0, n_b)`` valid and the rest zero.

Built from ``naive.py``'s named equations (``Equations``; no second copy of the math): the one change is that
sizes that are Python ints there (n, the write's length, the segment counter) are per-row tensors here, so
  * the row's timeline is its N slots: pending keys, then the new ones gathered into slots n_b .. n_b+t_b-1,
    zeros after (padding is never in the timeline, so never attended and never written);
  * the causal mask (§5.2) and the RoPE positions (§5.1) are per row: query i of row b sits at offset n_b + i;
  * the write (§7) is computed for the rows that complete their segment (n_b + t_b = N), picked by index;
  * the gate's first-segment rule (§8.2) reads each row's own counter.
Nothing branches on a size or a value, so it traces with batch and chunk symbolic (export/ragged_graph.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from infini_attention.reference import InfiniConfig

from . import naive
from .chunk import form_mode
from .state import TorchInfiniState
from .streaming import attention_layers, model_step


@dataclass
class RaggedState:
    """One layer's state for B independent streams.

    M (B, Hkv, dk, dv), z (B, Hkv, dk): each row's memory; k (B, Hkv, N, dk), v (B, Hkv, N, dv): pre-RoPE pending
    keys/values in N slots, the first ``pending[b]`` valid, the rest zero; pending, segments (B,) int64.
    lengths (B,) int64: the new tokens of each row in the call being made (set by `ragged_step`)."""

    M: torch.Tensor
    z: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pending: torch.Tensor
    segments: torch.Tensor
    lengths: torch.Tensor | None = None

    @classmethod
    def from_rows(cls, rows: list, N: int) -> "RaggedState":
        """Stack single-stream states (TorchInfiniState of batch 1, any pending n < N) into one."""
        def slots(a):  # (1, Hkv, n, d) -> (1, Hkv, N, d), zero after the n valid slots
            return torch.nn.functional.pad(a, (0, 0, 0, N - a.shape[2]))

        return cls(M=torch.cat([r.M for r in rows]), z=torch.cat([r.z for r in rows]),
                   k=torch.cat([slots(r.k) for r in rows]), v=torch.cat([slots(r.v) for r in rows]),
                   pending=torch.tensor([r.pending for r in rows], dtype=torch.int64),
                   segments=torch.stack([r.segments.reshape(()) for r in rows]).to(torch.int64))

    def row(self, b: int) -> TorchInfiniState:
        """Row ``b`` as the single-stream state (batch 1) it equals."""
        n = int(self.pending[b])
        return TorchInfiniState(self.M[b:b + 1], self.z[b:b + 1], self.k[b:b + 1, :, :n], self.v[b:b + 1, :, :n],
                                self.segments[b].clone())


def ragged_piece(c: InfiniConfig, p: dict, x: torch.Tensor, st: RaggedState, eq: naive.Equations = naive.SPEC):
    """x (B, T, D) padded, row b's first ``st.lengths[b]`` tokens real, n_b + t_b <= N -> (y (B, T, D), state).

    y is zero at padded positions; a row with t_b = 0 keeps its state exactly."""
    H, Hkv, G, dk, dv, N = c.n_heads, c.n_kv_heads, c.group_size, c.d_key, c.d_value, c.segment_len
    n, t = st.pending, st.lengths  # (B,) each
    L = n + t  # (B,) timeline length of each row, <= N
    step = torch.ones_like(x[:, :, 0], dtype=torch.int64).cumsum(1) - 1  # (B, T): 0 .. T-1 (T stays symbolic)
    real = step < t[:, None]  # (B, T) which positions hold real tokens
    slot = torch.arange(N, device=x.device)  # (N,)
    q = eq.split_heads(x @ p["wq"], H, dk)  # (B, T, H, dk)
    k_slots = _timeline(st.k, eq.split_heads(x @ p["wk"], Hkv, dk), n, t, slot)  # (B, Hkv, N, dk)
    v_slots = _timeline(st.v, eq.split_heads(x @ p["wv"], Hkv, dv), n, t, slot)  # (B, Hkv, N, dv)
    k, v = k_slots.transpose(1, 2).to(x.dtype), v_slots.transpose(1, 2).to(x.dtype)  # (B, N, Hkv, d)
    offset = n[:, None] + step  # (B, T): each query's offset in its row's segment (§5.1)
    q_rot, k_rot = q, k
    if c.rope_theta is not None:  # queries laid out as one long (1, B*T) run so each takes its own position
        B, T = q.shape[0], q.shape[1]
        q_rot = eq.rope(q.reshape(1, B * T, H, dk), offset.clamp(max=N - 1).reshape(-1), c).reshape(B, T, H, dk)
        k_rot = eq.rope(k, slot, c)  # (B, N, Hkv, dk): slot j is offset j in every row
    visible = (slot[None, None, :] <= offset[:, :, None])[:, None]  # (B, 1, T, N): §5.2's mask, per row
    a_dot = eq.local_attention(q_rot, eq.expand_kv(k_rot, G), eq.expand_kv(v, G), eq.attn_scale(c),
                               visible)  # (B, T, H, dv)
    q_mem, k_mem = eq.memory_qk(q, k, q_rot, k_rot)
    done = L == N  # (B,) rows whose piece completes their segment: only they write (§7)
    # Only those rows' segments are written (a write costs N dk dv per row: computed for every row it would
    # outweigh a decoding call's attention many times); rows picked by index, so still no branch.
    rows = done.nonzero()[:, 0]  # (W,), W >= 0
    M_w, z_w = eq.memory_update(eq, c, k_mem[rows], v[rows], st.M[rows], st.z[rows])  # (W, ...)
    M, z = st.M.index_copy(0, rows, M_w), st.z.index_copy(0, rows, z_w)
    a_mem = eq.memory_read(eq, q_mem, *eq.memory_seen((st.M, st.z), (M, z)), c.eps, G)  # (B, T, H, dv)
    w_mem, w_dot = eq.gate_weights(c, p["beta"], st.segments[:, None], st.M.dtype)  # (H,) or (B, H)
    a = _gate_rows(eq, a_mem, a_dot, w_mem, w_dot)  # (B, T, H, dv)
    y = eq.merge_heads(a.to(x.dtype)) @ p["wo"]  # (B, T, H*dv) @ (H*dv, D)
    y = torch.where(real[:, :, None], y, torch.zeros_like(y))
    k_pend, v_pend = k_slots.index_fill(0, rows, 0.0), v_slots.index_fill(0, rows, 0.0)  # completed: none pending
    pending = torch.where(done, torch.zeros_like(L), L)
    return y, RaggedState(M, z, k_pend, v_pend, pending, st.segments + done.long())


def _timeline(slots: torch.Tensor, new: torch.Tensor, n: torch.Tensor, t: torch.Tensor, slot: torch.Tensor):
    """Row b's segment so far: slots (B, Hkv, N, d) valid below n_b (zero from there: the layout's rule), then
    new (B, T, Hkv, d)'s first t_b tokens in slots n_b .. n_b+t_b-1 -> (B, Hkv, N, d), in the state's dtype. A gather and one select
    in the slots' own layout (each pass over N slots costs as much as a decoding call's attention)."""
    B, _, Hkv, d = new.shape
    src = torch.minimum((slot[None, :] - n[:, None]).clamp(min=0), (t - 1).clamp(min=0)[:, None])  # (B, N)
    gathered = torch.gather(new.transpose(1, 2).to(slots.dtype), 2,
                            src[:, None, :, None].expand(-1, Hkv, -1, d))  # (B, Hkv, N, d)
    is_new = ((slot[None, :] >= n[:, None]) & (slot[None, :] < (n + t)[:, None]))[:, None, :, None]  # (B, 1, N, 1)
    return torch.where(is_new, gathered, slots)  # (B, Hkv, N, d)


def _gate_rows(eq, a_mem, a_dot, w_mem, w_dot):
    """eq.gate on (B, T, H, dv). Weights per head (H,) broadcast as they are; per-row weights (B, H)
    (first_segment="local_only") are passed as B*H "heads", with the rows' axis moved to match."""
    if w_mem.ndim == 1:
        return eq.gate(a_mem, a_dot, w_mem, w_dot)
    B, T, H, dv = a_mem.shape
    flat = [a.transpose(0, 1).reshape(T, B * H, dv) for a in (a_mem, a_dot)]  # (T, B*H, dv)
    return eq.gate(*flat, w_mem.reshape(-1), w_dot.reshape(-1)).reshape(T, B, H, dv).transpose(0, 1)


def ragged_step(model, inputs: torch.Tensor, states: list, lengths: torch.Tensor, eq: naive.Equations = naive.SPEC):
    """One call of a layer or LM (torch_impl's own module) on B streams: inputs (B, T[, D]) padded, lengths (B,)
    real tokens per row (n_b + t_b <= N), states one RaggedState per attention layer -> (outputs, states)."""
    for st in states:
        st.lengths = lengths
    with _ragged_mode(model, eq):
        return model_step(model, inputs, states)


@contextmanager
def _ragged_mode(model, eq):
    checks = [(m, m.check_values) for m in [model, *attention_layers(model)] if hasattr(m, "check_values")]
    for m, _ in checks:
        m.check_values = False  # the LM's id check reads values: padding ids are 0, in range
    try:
        with form_mode(model, ragged_piece, eq):
            yield
    finally:
        for m, value in checks:
            m.check_values = value


def row_lengths(pending: list[int], remaining: list[int], N: int) -> list[int]:
    """Tokens each row takes in the next call: the rest of its segment at most (``reference.pieces``' rule)."""
    return [min(r, N - n) for n, r in zip(pending, remaining)]

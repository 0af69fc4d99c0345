"""The plain torch form of Infini-attention: the equations of ``reference/equations.py`` under the same
names, one segment piece at a time (like flash-linear-attention's ``naive.py`` beside its fast kernels).

It is the project's one second torch copy of the math, and it serves three users:
  * the fast layer (``layer.py``) is property-tested against it (tests/test_torch_naive.py);
  * the ONNX export traces it: ``InfiniAttention`` runs it in *piece mode* (``piece_mode``), where one
    call is one piece of one segment (``n + t <= N``) and nothing branches on a size, so batch, chunk
    and past_len stay symbolic in the graph (export/graph.py);
  * the conformance mutants swap named pieces of it (``Equations``; conformance/mutants.py).

Shape names: B batch, t new tokens, n pending tokens, L = n + t, H query heads, Hkv key/value heads,
G = H / Hkv, dk key dim, dv value dim, N segment length, D model width. Memory math (sigma, reads,
writes, the gate) runs in the memory dtype (float32 or wider, SPEC.md §11).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from infini_attention.reference import InfiniConfig, pieces

from .functional import apply_rope, rope_tables, sigma  # shared with the fast layer: Eq. 2 and Eq. 4
from .state import TorchInfiniState


def split_heads(a: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """SPEC.md §3.1: head h owns columns h*d:(h+1)*d. (B, T, n*d) -> (B, T, n, d)."""
    return a.unflatten(-1, (n_heads, d_head))  # (B, T, n, d)


def merge_heads(a: torch.Tensor) -> torch.Tensor:
    """Eq. 9's concat_h: (B, T, H, dv) -> (B, T, H*dv), heads in order."""
    return a.flatten(-2)  # (B, T, H*dv)


def expand_kv(a: torch.Tensor, group_size: int, dim: int = 2) -> torch.Tensor:
    """SPEC.md §3.2: query head h reads key/value head h // G (``repeat_interleave`` along ``dim``).

    Written as a gather by that index: the mapping reads as itself, and it is one node in ONNX."""
    if group_size == 1:
        return a
    kv_of_head = [h // group_size for h in range(a.shape[dim] * group_size)]  # fixed by the config
    return a.index_select(dim, torch.tensor(kv_of_head, device=a.device))


def rope_positions(n, t, segments, N: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC.md §5.1: positions are offsets within the segment: queries n .. L-1, keys 0 .. L-1."""
    return torch.arange(t, device=device) + n, torch.arange(n + t, device=device)  # (t,), (L,)


_TABLES: dict = {}


def rope(a: torch.Tensor, positions: torch.Tensor, c: InfiniConfig) -> torch.Tensor:
    """Eq. 2 (SPEC.md §5.1): rotate pairs by ``pos * theta**(-2j/dk)``; angles computed in float64 once.

    a (B, T, n, dk), positions (T,) offsets in [0, N) -> (B, T, n, dk)."""
    key = (c.segment_len, c.d_key, c.rope_theta, a.dtype, a.device)
    if key not in _TABLES:
        with torch.inference_mode(False):  # plain tensors, so they can join autograd later
            _TABLES[key] = rope_tables(c.segment_len, c.d_key, c.rope_theta, a.dtype, a.device)
    cos, sin = (tab[positions] for tab in _TABLES[key])  # (T, dk/2) rows of the table
    return apply_rope(a, cos, sin, c.rope_style)


def visible(n, t, device) -> torch.Tensor:
    """SPEC.md §5.2: query i (offset n + i) sees keys 0 .. n + i: a (t, L) bottom-right causal mask."""
    return torch.arange(n + t, device=device)[None, :] <= (torch.arange(t, device=device) + n)[:, None]


def attn_scale(c: InfiniConfig) -> float:
    """SPEC.md §5.2: ``scale``, or 1/sqrt(dk)."""
    return c.attn_scale


def local_attention(q, k, v, scale: float, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 (SPEC.md §5.2): softmax(scale q k^T + causal mask) v inside the segment.

    q (B, t, H, dk), k (B, L, H, dk), v (B, L, H, dv), mask (t, L) -> (B, t, H, dv)."""
    scores = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) * scale  # (B, H, t, dk) @ (B, H, dk, L) -> (B, H, t, L)
    weights = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights @ v.transpose(1, 2)).transpose(1, 2)  # (B, H, t, dv) -> (B, t, H, dv)


def memory_read(eq: "Equations", q, M, z, eps: float, group_size: int) -> torch.Tensor:
    """Eq. 5 (SPEC.md §6): sigma(q) M / max(sigma(q) . z, eps); exactly 0 while M = z = 0.

    q (B, T, H, dk) before RoPE, M (B, Hkv, dk, dv), z (B, Hkv, dk) -> (B, T, H, dv)."""
    sq = eq.sigma(q.to(M.dtype)).transpose(1, 2)  # (B, H, T, dk)
    num = sq @ eq.expand_kv(M, group_size, dim=1)  # (B, H, T, dv)
    den = sq @ eq.expand_kv(z, group_size, dim=1)[..., None]  # (B, H, T, 1)
    return (num / den.clamp_min(eps)).transpose(1, 2)  # (B, T, H, dv)


def memory_update(eq: "Equations", c: InfiniConfig, k, v, M, z):
    """Eq. 6 / Eq. 7 (SPEC.md §7) for the keys (before RoPE) and values of a completed segment.

    k (B, W, Hkv, dk), v (B, W, Hkv, dv) with W = N (a segment completed) or 0 (nothing is written:
    the products below add exactly 0). z's increment is a product with ones, not a sum, because ONNX
    Runtime returns an empty tensor, not 0, for ReduceSum over an empty axis. -> (M, z)."""
    sk = eq.sigma(k.to(M.dtype)).transpose(1, 2)  # (B, Hkv, W, dk)
    vt = v.to(M.dtype).transpose(1, 2)  # (B, Hkv, W, dv)
    if c.update == "delta":  # subtract what the memory already returns for these keys (Eq. 7)
        vt = vt - eq.memory_read(eq, k, M, z, c.eps, 1).transpose(1, 2)  # (B, Hkv, W, dv)
    dmz = sk.transpose(-1, -2) @ torch.cat((vt, torch.ones_like(vt[..., :1])), dim=-1)  # (B, Hkv, dk, dv + 1)
    return M + dmz[..., :-1], z + dmz[..., -1]


def memory_seen(before, after):
    """SPEC.md §6: a segment's reads see the memory as it stood before the segment (its own write comes after)."""
    return before


def memory_qk(q, k, q_rot, k_rot):
    """SPEC.md §5.1: the memory reads and writes q and k before RoPE."""
    return q, k


def gate_weights(c: InfiniConfig, beta, segments, mdt):
    """(w_mem, w_dot) per head (H,) (SPEC.md §8): s = sigmoid(beta) weights the memory branch under
    gate_on="memory" (the local one under "local"); first_segment="local_only" makes the stream's first
    segment plain local attention (a tensor condition: no host sync, and it traces)."""
    s = torch.sigmoid(beta.to(mdt))  # (H,)
    w_mem, w_dot = (s, 1 - s) if c.gate_on == "memory" else (1 - s, s)
    if c.first_segment == "local_only":
        first = (segments == 0).to(mdt)  # 0-d
        w_mem, w_dot = w_mem * (1 - first), w_dot * (1 - first) + first
    return w_mem, w_dot


def gate(a_mem, a_dot, w_mem, w_dot) -> torch.Tensor:
    """Eq. 8 (SPEC.md §8.1): A = w_mem * A_mem + w_dot * A_dot. (B, T, H, dv) each, weights (H,)."""
    return w_mem[:, None] * a_mem + w_dot[:, None] * a_dot.to(a_mem.dtype)


@dataclass(frozen=True)
class Equations:
    """The named pieces ``segment_piece`` is built from; a mutant is ``dataclasses.replace`` of some of them."""

    split_heads: Callable = split_heads
    merge_heads: Callable = merge_heads
    expand_kv: Callable = expand_kv
    rope_positions: Callable = rope_positions
    rope: Callable = rope
    visible: Callable = visible
    attn_scale: Callable = attn_scale
    local_attention: Callable = local_attention
    sigma: Callable = sigma
    memory_read: Callable = memory_read
    memory_update: Callable = memory_update
    memory_seen: Callable = memory_seen
    memory_qk: Callable = memory_qk
    gate_weights: Callable = gate_weights
    gate: Callable = gate

    def replace(self, **swaps) -> "Equations":
        return dataclasses.replace(self, **swaps)


SPEC = Equations()


def segment_piece(c: InfiniConfig, p: dict, x: torch.Tensor, st: TorchInfiniState, eq: Equations = SPEC):
    """Tokens at offsets n .. n+t-1 of one segment (n = st.pending, n + t <= N) -> (y (B, t, D), state).

    Branch-free: ``done`` is N when the piece completes its segment and 0 otherwise, and the write and the
    pending keys are slices by it, so the same code runs eagerly and traces with symbolic sizes."""
    H, Hkv, G, dk, dv, N = c.n_heads, c.n_kv_heads, c.group_size, c.d_key, c.d_value, c.segment_len
    n, t = st.k.shape[2], x.shape[1]  # sizes read off the inputs only (the tracer keeps them symbolic)
    done = ((n + t) // N) * (n + t)  # N if this piece completes the segment, else 0
    q = eq.split_heads(x @ p["wq"], H, dk)  # (B, t, H, dk)
    k = torch.cat((st.k.transpose(1, 2).to(x.dtype), eq.split_heads(x @ p["wk"], Hkv, dk)), dim=1)  # (B, L, Hkv, dk)
    v = torch.cat((st.v.transpose(1, 2).to(x.dtype), eq.split_heads(x @ p["wv"], Hkv, dv)), dim=1)  # (B, L, Hkv, dv)
    q_rot, k_rot = q, k
    if c.rope_theta is not None:
        q_pos, k_pos = eq.rope_positions(n, t, st.segments, N, x.device)
        q_rot, k_rot = eq.rope(q, q_pos, c), eq.rope(k, k_pos, c)
    a_dot = eq.local_attention(q_rot, eq.expand_kv(k_rot, G), eq.expand_kv(v, G), eq.attn_scale(c),
                               eq.visible(n, t, x.device))  # (B, t, H, dv)
    q_mem, k_mem = eq.memory_qk(q, k, q_rot, k_rot)
    M, z = eq.memory_update(eq, c, k_mem[:, :done], v[:, :done], st.M, st.z)
    a_mem = eq.memory_read(eq, q_mem, *eq.memory_seen((st.M, st.z), (M, z)), c.eps, G)  # (B, t, H, dv)
    w_mem, w_dot = eq.gate_weights(c, p["beta"], st.segments, st.M.dtype)
    a = eq.gate(a_mem, a_dot, w_mem, w_dot)  # (B, t, H, dv)
    y = eq.merge_heads(a.to(x.dtype)) @ p["wo"]  # (B, t, H*dv) @ (H*dv, D)
    k_pend, v_pend = k[:, done:].transpose(1, 2), v[:, done:].transpose(1, 2)  # (B, Hkv, L - done, d)
    return y, TorchInfiniState(M, z, k_pend, v_pend, st.segments + (n + t) // N)


def forward(c: InfiniConfig, p: dict, x: torch.Tensor, state: TorchInfiniState | None = None,
            eq: Equations = SPEC):
    """A call of any length: cut into segment pieces (``reference.pieces``), each run by ``segment_piece``.

    p: {wq, wk, wv, wo, beta} tensors (SPEC.md §3.1 layouts); state None starts a stream. -> (y, state)."""
    st = TorchInfiniState.zeros(c, x.shape[0], x.dtype, x.device) if state is None else state
    ys = []
    for a, b in pieces(st.pending, x.shape[1], c.segment_len):
        y, st = segment_piece(c, p, x[:, a:b], st, eq)
        ys.append(y)
    return (torch.cat(ys, dim=1) if ys else x.new_zeros(x.shape[0], 0, c.d_model)), st


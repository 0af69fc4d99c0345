"""The whole-call form: one call of any number of tokens, branch-free, from ``naive.py``'s named equations.

``naive.segment_piece`` runs one piece of one segment (``n + t <= N``). ``chunk_forward`` runs a call of any
length t after n pending tokens: the call's timeline (L = n + t positions, starting on a segment boundary)
is padded to S = ceil(L / N) whole segments, and
  * local attention runs on all S segments at once, batched as (B*S, N, ...) blocks with the square causal
    mask (the n pending positions get dummy queries, dropped afterwards: at most one segment's waste);
  * the memory each segment reads is the memory before it (SPEC.md §6): for the linear rule an exclusive
    prefix sum of the segments' writes, for the delta rule a scan over segments (`scan_segments`); only the
    C = L // N completed segments write (§7), the padded last one never does;
  * the gate, RoPE (positions = offsets in the segment), GQA and the output projection are naive's.
Nothing branches on a size, so torch.export keeps batch, chunk and past_len symbolic. It is what the ONNX
export runs for calls longer than a piece (export/graph.py); tests/test_torch_chunk.py proves it equal to
the reference for any split, both update rules, every option.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from infini_attention.reference import InfiniConfig

from . import functional as Fn
from . import naive
from .state import TorchInfiniState


def chunk_forward(c: InfiniConfig, p: dict, x: torch.Tensor, st: TorchInfiniState, eq: naive.Equations = naive.SPEC):
    """x (B, t, D) after st's n pending tokens, any t >= 0 -> (y (B, t, D), state after the call)."""
    H, Hkv, G, dk, dv, N = c.n_heads, c.n_kv_heads, c.group_size, c.d_key, c.d_value, c.segment_len
    B, t, n = x.shape[0], x.shape[1], st.k.shape[2]
    L = n + t
    S = (L + N - 1) // N  # segments the timeline touches
    P = S * N - L  # padding that completes the last one
    C = L // N  # segments completed by this call
    q = eq.split_heads(x @ p["wq"], H, dk)  # (B, t, H, dk)
    k = torch.cat((st.k.transpose(1, 2).to(x.dtype), eq.split_heads(x @ p["wk"], Hkv, dk)), dim=1)  # (B, L, Hkv, dk)
    v = torch.cat((st.v.transpose(1, 2).to(x.dtype), eq.split_heads(x @ p["wv"], Hkv, dv)), dim=1)  # (B, L, Hkv, dv)
    qb = F.pad(q, (0, 0, 0, 0, n, P)).reshape(B * S, N, H, dk)  # dummy queries for the pending positions
    kb = F.pad(k, (0, 0, 0, 0, 0, P)).reshape(B * S, N, Hkv, dk)  # (B*S, N, Hkv, dk) blocks
    vb = F.pad(v, (0, 0, 0, 0, 0, P)).reshape(B * S, N, Hkv, dv)
    q_rot, k_rot = qb, kb
    if c.rope_theta is not None:
        q_pos, k_pos = eq.rope_positions(0, N, st.segments, N, x.device)  # every block starts a segment
        q_rot, k_rot = eq.rope(qb, q_pos, c), eq.rope(kb, k_pos, c)
    a_dot = eq.local_attention(q_rot, eq.expand_kv(k_rot, G), eq.expand_kv(vb, G), eq.attn_scale(c),
                               eq.visible(0, N, x.device))  # (B*S, N, H, dv)
    q_mem, k_mem = eq.memory_qk(qb, kb, q_rot, k_rot)
    mdt = st.M.dtype
    m_before, z_before, M, z = segment_memories(eq, c, k_mem.reshape(B, S, N, Hkv, dk), vb.reshape(B, S, N, Hkv, dv),
                                                st.M, st.z, C)  # (B, S, Hkv, dk, dv), (B, S, Hkv, dk); end state
    a_mem = eq.memory_read(eq, q_mem, m_before.reshape(B * S, Hkv, dk, dv), z_before.reshape(B * S, Hkv, dk),
                           c.eps, G)  # (B*S, N, H, dv)
    segs = st.segments + torch.arange(S, device=x.device)  # each block's count of completed segments before it
    w_mem, w_dot = eq.gate_weights(c, p["beta"], segs[:, None], mdt)  # (H,), or (S, H) with first_segment
    a = _gated(eq, a_mem.reshape(B, S, N, H, dv), a_dot.reshape(B, S, N, H, dv), w_mem, w_dot)  # (B, S, N, H, dv)
    a = a.reshape(B, S * N, H, dv)[:, n:L]  # the t new tokens
    y = eq.merge_heads(a.to(x.dtype)) @ p["wo"]  # (B, t, D)
    k_pend, v_pend = k[:, C * N:].transpose(1, 2), v[:, C * N:].transpose(1, 2)  # (B, Hkv, L - C*N, d)
    return y, TorchInfiniState(M, z, k_pend, v_pend, st.segments + C)


def _gated(eq, a_mem, a_dot, w_mem, w_dot):
    """eq.gate on (B, S, N, H, dv) blocks. Weights per head (H,) broadcast as they are; per-block weights
    (S, H) (first_segment="local_only") are passed as S*H "heads", with the blocks' axes moved to match."""
    if w_mem.ndim == 1:
        return eq.gate(a_mem, a_dot, w_mem, w_dot)
    B, S, N, H, dv = a_mem.shape
    flat = [a.transpose(1, 2).reshape(B, N, S * H, dv) for a in (a_mem, a_dot)]  # (B, N, S*H, dv)
    wm, wd = (w.expand(S, H).reshape(S * H) for w in (w_mem, w_dot))
    return eq.gate(*flat, wm, wd).reshape(B, N, S, H, dv).transpose(1, 2)


def segment_memories(eq, c: InfiniConfig, k, v, M0, z0, C):
    """M, z before each of the S segments of k (B, S, N, Hkv, dk), v (B, S, N, Hkv, dv), and after the first C
    (the completed ones; the others write nothing) -> (m_before (B, S, Hkv, dk, dv), z_before (B, S, Hkv, dk), M, z)."""
    B, S, N, Hkv, dk = k.shape
    dv = v.shape[-1]
    done = torch.arange(S, device=k.device) < C  # (S,) which segments write
    if c.update == "linear":  # each write depends on its own segment only: all at once, then a prefix sum
        zero_m, zero_z = M0.new_zeros(B * S, Hkv, dk, dv), z0.new_zeros(B * S, Hkv, dk)
        dm, dz = eq.memory_update(eq, c, k.reshape(B * S, N, Hkv, dk), v.reshape(B * S, N, Hkv, dv), zero_m, zero_z)
        dm = torch.where(done[None, :, None, None, None], dm.reshape(B, S, Hkv, dk, dv), 0.0)
        dz = torch.where(done[None, :, None, None], dz.reshape(B, S, Hkv, dk), 0.0)
        ms = torch.cat((M0[:, None], dm), dim=1).cumsum(dim=1)  # (B, S+1, ...): (M0 + dM0) + dM1 ..., as §7 adds
        zs = torch.cat((z0[:, None], dz), dim=1).cumsum(dim=1)
        return ms[:, :S], zs[:, :S], ms[:, S], zs[:, S]

    # The delta rule reads the memory it writes to, so segments go one after another; everything that does not
    # depend on M (sigma(K), the layout, z's prefix sum order) is computed for all segments before the scan.
    sk = eq.sigma(k.to(M0.dtype)).permute(1, 0, 3, 2, 4)  # (S, B, Hkv, N, dk)
    vt = v.to(M0.dtype).permute(1, 0, 3, 2, 4)  # (S, B, Hkv, N, dv)
    ms, zs, M, z = scan_segments(M0, z0, sk, vt, done, c.eps)
    return ms.transpose(0, 1), zs.transpose(0, 1), M, z


def scan_segments(m, z, sk, vt, done, eps: float):
    """The delta rule (Eq. 7, ``functional.delta_update``) over the segments of sk = sigma(K) (S, B, Hkv, N, dk),
    vt (S, B, Hkv, N, dv); segment s writes only where ``done[s]`` -> (M before each (S, ...), z before each, M, z).

    A loop over segments, never tokens: torch's ``scan`` higher-order op, which torch.export keeps as one node
    (ONNX ``Scan``); under the TorchScript tracer, which would unroll a Python loop for the example's length,
    the same loop scripted (``_delta_scan``, an ONNX ``Loop``)."""
    if torch.jit.is_tracing():
        return _script()(m, z, sk, vt, done, eps)
    from torch._higher_order_ops.scan import scan

    def step(carry, xs):
        m_, z_ = carry
        sk_s, v_s, done_s = xs
        m_new, z_new = Fn.delta_update(m_, z_, sk_s, v_s, eps)
        return (torch.where(done_s, m_new, m_), torch.where(done_s, z_new, z_)), (m_.clone(), z_.clone())

    (m, z), (ms, zs) = scan(step, (m, z), (sk, vt, done))
    return ms, zs, m, z


def _delta_scan(m: torch.Tensor, z: torch.Tensor, sk: torch.Tensor, v: torch.Tensor, done: torch.Tensor, eps: float):
    """`scan_segments` as a scriptable loop, for the TorchScript exporter."""
    ms: list[torch.Tensor] = []
    zs: list[torch.Tensor] = []
    for s in range(sk.shape[0]):
        ms.append(m)
        zs.append(z)
        m_new, z_new = Fn.delta_update(m, z, sk[s], v[s], eps)
        m, z = torch.where(done[s], m_new, m), torch.where(done[s], z_new, z)
    return torch.stack(ms), torch.stack(zs), m, z


_SCRIPTED = []


def _script():
    if not _SCRIPTED:
        _SCRIPTED.append(torch.jit.script(_delta_scan))
    return _SCRIPTED[0]


@contextmanager
def form_mode(model, form, eq: naive.Equations = naive.SPEC):
    """Run every attention layer of ``model`` as ``form(c, params, x, state, eq)`` inside (``naive.segment_piece``
    or ``chunk_forward``): what the exporter traces. Layer forwards are swapped per instance and restored."""
    from .streaming import attention_layers

    layers = attention_layers(model)
    for m in layers:
        m.forward = _bound(m, form, eq)
    try:
        yield model
    finally:
        for m in layers:
            del m.forward


def _bound(layer, form, eq):
    def forward(x, state=None, **_):
        if state is None:
            state = layer.init_state(x.shape[0])
        return form(layer.config, {n: getattr(layer, n) for n in ("wq", "wk", "wv", "wo", "beta")}, x, state, eq)

    return forward

"""Deliberately broken implementations: each makes one realistic mistake; the suite must reject every one.

``CONTROL`` (no mistake) must pass. A mutant is a valid ``--impl``, e.g.
``infini conformance --impl infini_attention.conformance.mutants:gate_swapped``. The engine is a
small, loop-per-segment-piece PyTorch port of the reference (SPEC.md §4-§8), so mutants run in
every dtype and support ``grad``. ``MUTANTS`` maps each name to (the mistake, the property that
names it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..reference import InfiniConfig

MUTANTS = {
    "gate_swapped": ("sigmoid(beta) always weights the local branch (undeclared gate_on=local)", "gate_limits"),
    "update_before_read": ("the segment is written to memory before its own tokens read it", "causality"),
    "rope_on_memory": ("RoPE applied to the queries/keys that read and write the memory", "update_rule"),
    "gqa_modulo": ("query head h uses key/value head h % Hkv instead of h // G", "gqa_mapping"),
    "no_eps": ("memory read divides by sigma(q).z without the max(., eps) floor (0/0 on the first segment)",
               "first_segment"),
    "z_not_accumulated": ("z is overwritten with the last segment's sum instead of accumulated", "update_rule"),
    "delta_ignored": ("update='delta' silently uses the linear rule", "update_rule"),
    "rope_stream_positions": ("RoPE positions counted from the stream start, not the segment start, angles in "
                              "the compute dtype (exact math cannot tell: RoPE is relative)", "long_stream"),
    "rope_call_positions": ("RoPE query positions counted from the call start (decode steps all at 0)",
                            "split_invariance"),
    "scale_d_model": ("softmax scale 1/sqrt(d_model) (the paper's typo) instead of 1/sqrt(d_key)",
                      "local_attention"),
    "write_partial": ("a call ending mid-segment writes its partial segment to memory", "split_invariance"),
    "head_interleave": ("heads reshaped as (B, T, d, H): head h owns columns h::H", "head_layout"),
    "state_not_carried": ("the state argument is ignored: every call starts a new stream", "split_invariance"),
    "no_pending_kv": ("keys/values of the unfinished segment are not kept between calls", "split_invariance"),
    "causal_off_by_one": ("the causal mask lets each query see the next token", "causality"),
    "bf16_state": ("M and z stored in bfloat16 (SPEC.md §11 asks for float32 or wider)", "long_stream"),
    "local_only_undeclared": ("first segment is plain local attention (undeclared first_segment=local_only)",
                              "first_segment"),
    "sigma_no_plus_one": ("sigma = elu (the +1 forgotten)", "update_rule"),
    "memory_shared_across_batch": ("one memory for the whole batch (writes summed over rows)",
                                   "batch_independence"),
    "memory_in_instance": ("the memory lives in the instance: state=None does not reset it", "fresh_stream"),
    "memory_detached": ("M and z detached after every write (no backpropagation through the memory)",
                        "gradients"),
}
CONTROL = "control"
# The dtype at which a mistake becomes observable, where it is not the default float32: RoPE is
# relative, so stream-start positions only show through the rounding of large angles.
OBSERVABLE_AT = {"rope_stream_positions": "bfloat16"}


@dataclass
class MutantState:
    M: torch.Tensor  # (B, Hkv, dk, dv), canonical
    z: torch.Tensor  # (B, Hkv, dk), canonical
    k: torch.Tensor  # (B, n, Hkv, dk), pending keys before RoPE
    v: torch.Tensor  # (B, n, Hkv, dv)
    segments: int = 0
    position: int = 0  # tokens seen since the stream start


class MutantImpl:
    capabilities = {"delta", "gqa", "rope", "chunked", "canonical_state", "grad",
                    "float64", "float32", "bfloat16", "float16"}

    def __init__(self, config: InfiniConfig, dtype: str = "float32", bug: str = CONTROL):
        self.c, self.dt, self.bug = config, getattr(torch, dtype), bug
        self.mdt = torch.float64 if self.dt == torch.float64 else torch.float32
        self.hidden: MutantState | None = None

    # -------------------------------------------------------------- the contract
    def forward(self, params, x, state=None):
        with torch.no_grad():
            y, st = self._forward(self._params(params), self._t(x), state)
        return (y.float() if self.dt == torch.bfloat16 else y).numpy(), st

    def grad(self, params, x, dy):
        p = {k: v.requires_grad_(True) for k, v in self._params(params).items()}
        xt = self._t(x).requires_grad_(True)
        y, _ = self._forward(p, xt, None)
        (y * self._t(dy)).sum().backward()
        return {"x": xt.grad, **{k: v.grad for k, v in p.items()}}

    def _t(self, a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.dt)

    def _params(self, params):
        return {k: self._t(v) if k != "beta" else self._t(v).to(self.mdt) for k, v in params.items()}

    # -------------------------------------------------------------- the engine
    def _forward(self, p, x, state):
        c, B = self.c, x.shape[0]
        if state is None or self.bug == "state_not_carried":
            state = self.hidden if (self.bug == "memory_in_instance" and self.hidden is not None) else self._empty(B)
        ys, start, T = [], 0, x.shape[1]
        while start < T:
            take = min(T - start, c.segment_len - state.k.shape[1])
            y, state = self._piece(p, x[:, start:start + take], state)
            ys.append(y)
            start += take
        if self.bug == "write_partial" and 0 < state.k.shape[1]:
            state = self._write(state, state.k, state.v)
        if self.bug == "no_pending_kv":
            state = MutantState(state.M, state.z, state.k[:, :0], state.v[:, :0], state.segments, state.position)
        self.hidden = state
        return (torch.cat(ys, dim=1) if ys else x.new_zeros(B, 0, c.d_model)), state

    def _empty(self, B):
        c = self.c
        return MutantState(torch.zeros(B, c.n_kv_heads, c.d_key, c.d_value, dtype=self.mdt),
                           torch.zeros(B, c.n_kv_heads, c.d_key, dtype=self.mdt),
                           torch.zeros(B, 0, c.n_kv_heads, c.d_key, dtype=self.dt),
                           torch.zeros(B, 0, c.n_kv_heads, c.d_value, dtype=self.dt))

    def _heads(self, a, n, d):  # (B, T, n*d) -> (B, T, n, d)
        if self.bug == "head_interleave":
            return a.unflatten(-1, (d, n)).transpose(-1, -2)
        return a.unflatten(-1, (n, d))

    def _merge(self, a):  # (B, T, H, dv) -> (B, T, H*dv)
        return (a.transpose(-1, -2) if self.bug == "head_interleave" else a).flatten(-2)

    def _sigma(self, a):
        return F.elu(a) if self.bug == "sigma_no_plus_one" else F.elu(a) + 1.0

    def _rope(self, a, pos):
        c = self.c
        d = a.shape[-1]
        adt = self.dt if self.bug == "rope_stream_positions" else torch.float64  # angles in the compute dtype
        inv = c.rope_theta ** (-torch.arange(0, d, 2, dtype=adt) / d)
        ang = torch.as_tensor(pos, dtype=adt)[:, None] * inv[None, :]
        cos, sin = ang.cos().to(a.dtype)[None, :, None, :], ang.sin().to(a.dtype)[None, :, None, :]
        if c.rope_style == "half":
            u, w = a[..., :d // 2], a[..., d // 2:]
            return torch.cat((u * cos - w * sin, w * cos + u * sin), dim=-1)
        u, w = a[..., 0::2], a[..., 1::2]
        return torch.stack((u * cos - w * sin, w * cos + u * sin), dim=-1).flatten(-2)

    def _kv_index(self):
        c = self.c
        h = torch.arange(c.n_heads)
        return h % c.n_kv_heads if self.bug == "gqa_modulo" else h // c.group_size

    def _read(self, q, M, z):  # q (B, t, H, dk) -> (B, t, H, dv)
        idx = self._kv_index()
        sq = self._sigma(q.to(self.mdt))
        num = torch.einsum("bthk,bhkv->bthv", sq, M[:, idx])
        den = torch.einsum("bthk,bhk->bth", sq, z[:, idx])[..., None]
        return num / (den if self.bug == "no_eps" else den.clamp_min(self.c.eps))

    def _write(self, st, k, v):  # k (B, N, Hkv, dk) before RoPE
        c = self.c
        sk, vv = self._sigma(k.to(self.mdt)), v.to(self.mdt)
        if c.update == "delta" and self.bug != "delta_ignored":
            sq = sk
            vv = vv - torch.einsum("bthk,bhkv->bthv", sq, st.M) / torch.einsum(
                "bthk,bhk->bth", sq, st.z)[..., None].clamp_min(c.eps)
        dM, dz = torch.einsum("bthk,bthv->bhkv", sk, vv), sk.sum(dim=1)
        if self.bug == "memory_shared_across_batch":
            dM, dz = dM.sum(0, keepdim=True).expand_as(dM), dz.sum(0, keepdim=True).expand_as(dz)
        M, z = st.M + dM, (dz if self.bug == "z_not_accumulated" else st.z + dz)
        if self.bug == "bf16_state":
            M, z = M.to(torch.bfloat16).to(self.mdt), z.to(torch.bfloat16).to(self.mdt)
        if self.bug == "memory_detached":
            M, z = M.detach(), z.detach()
        k0, v0 = k[:, :0], v[:, :0]
        return MutantState(M, z, k0, v0, st.segments + 1, st.position)

    def _piece(self, p, x, st):
        c, bug = self.c, self.bug
        n, t, N = st.k.shape[1], x.shape[1], c.segment_len
        q = self._heads(x @ p["wq"], c.n_heads, c.d_key)
        k = torch.cat((st.k, self._heads(x @ p["wk"], c.n_kv_heads, c.d_key)), dim=1)  # (B, n+t, Hkv, dk)
        v = torch.cat((st.v, self._heads(x @ p["wv"], c.n_kv_heads, c.d_value)), dim=1)
        completes = n + t == N
        q_loc, k_loc = q, k
        if c.rope_theta is not None:
            base = st.position - n if bug == "rope_stream_positions" else 0
            q_pos = np.arange(t) if bug == "rope_call_positions" else np.arange(base + n, base + n + t)
            q_loc, k_loc = self._rope(q, q_pos), self._rope(k, np.arange(base, base + n + t))
        idx = self._kv_index()
        scale = c.scale if c.scale is not None else 1 / math.sqrt(c.d_model if bug == "scale_d_model" else c.d_key)
        scores = torch.einsum("bqhd,bkhd->bhqk", q_loc, k_loc[:, :, idx]) * scale
        shift = 1 if bug == "causal_off_by_one" else 0
        visible = torch.arange(n + t)[None, :] <= (n + torch.arange(t))[:, None] + shift
        a_dot = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~visible, -torch.inf).softmax(-1), v[:, :, idx])
        mem = st
        if bug == "update_before_read" and completes:
            mem = self._write(st, k, v)
        q_mem, k_mem = (q_loc, k_loc) if bug == "rope_on_memory" else (q, k)
        first = st.segments == 0 and (c.first_segment == "local_only" or bug == "local_only_undeclared")
        if first:
            a = a_dot.to(self.mdt)
        else:
            s = torch.sigmoid(p["beta"])[None, None, :, None]
            a_mem, a_loc = self._read(q_mem, mem.M, mem.z), a_dot.to(self.mdt)
            if c.gate_on == "local" or bug == "gate_swapped":  # the mutant weights local, whatever the config
                a_mem, a_loc = a_loc, a_mem
            a = s * a_mem + (1 - s) * a_loc
        y = self._merge(a.to(self.dt)) @ p["wo"]
        st = MutantState(st.M, st.z, k, v, st.segments, st.position + t)
        if completes:
            st = self._write(st, k_mem, v)
        return y, st


def mutant_factory(bug: str):
    """``make(config, dtype)`` for one mutant (or ``CONTROL``)."""
    def make(config: InfiniConfig, dtype: str = "float32") -> MutantImpl:
        return MutantImpl(config, dtype, bug)
    make.capabilities = MutantImpl.capabilities
    make.__name__ = bug
    return make


control = mutant_factory(CONTROL)
for _name in MUTANTS:
    globals()[_name] = mutant_factory(_name)

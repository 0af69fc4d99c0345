"""Deliberately broken implementations: each makes one realistic mistake; the suite must reject every one.

A mutant is torch_impl's plain form (``torch_impl/naive.py``) with some of its named equations swapped
(``SWAPS``: each swap wraps the equation it replaces, so swaps compose), or, for mistakes about the
stream rather than the math, a change to how calls are chained (``STREAM_BUGS``). ``CONTROL`` (no swap)
must pass. Every mutant is a valid ``--impl``, e.g. ``infini conformance --impl
infini_attention.conformance.mutants:gate_swapped``, and so is any combination joined by ``+``
(``mutants:gate_swapped+no_eps``: several mistakes at once, what ``diagnosis_rate`` measures); they run
in every dtype and support ``grad``. ``MUTANTS`` maps each name to (the mistake, the property that names
it); ``MASKING`` lists the pairs of which one hides the other (never combined).
"""
from __future__ import annotations

import math

import numpy as np

from .contract import require
from .deviations import DEVIATIONS

torch = require("torch", "the mutants")
F = torch.nn.functional

from ..reference import InfiniConfig  # noqa: E402
from ..torch_impl import TorchInfiniState, naive  # noqa: E402
from ..torch_impl.functional import apply_rope, memory_dtype  # noqa: E402

MUTANTS = {name: (d.mistake, d.property) for name, d in DEVIATIONS.items()}  # one mutant per class
CONTROL = "control"
# The dtype at which a mistake becomes observable, where it is not the default float32: RoPE is
# relative, so stream-start positions only show through the rounding of large angles.
OBSERVABLE_AT = {"rope_stream_positions": "bfloat16"}
# Pairs of mistakes of which one makes the other unobservable: a combination never holds both.
MASKING = {
    frozenset({"state_not_carried", "memory_in_instance"}): "every call starts afresh anyway",
    frozenset({"state_not_carried", "no_pending_kv"}): "nothing is carried, pending keys included",
    frozenset({"state_not_carried", "write_partial"}): "the partial write lands in a state that is dropped",
    frozenset({"state_not_carried", "rope_call_positions"}): "every call starts a segment: call start = offset",
    frozenset({"no_pending_kv", "write_partial"}): "the partial write already clears the pending keys",
    frozenset({"no_pending_kv", "rope_call_positions"}): "with no pending keys every call starts at offset 0",
    frozenset({"write_partial", "rope_call_positions"}): "every call starts at offset 0 after a partial write",
    frozenset({"z_init_nonzero", "z_not_accumulated"}): "the first write overwrites the initial z",
    frozenset({"z_init_nonzero", "no_eps"}): "z = 1 keeps the first read's denominator above 0",
    frozenset({"no_eps", "local_only_undeclared"}): "the first segment's 0/0 read reaches y even gated off (0 x NaN)",
    frozenset({"no_eps", "memory_detached"}): "the first segment's 0/0 makes every gradient NaN",
}

SPEC = naive.SPEC


def _with_config(**changes):
    """A wrapper running the inner ``gate_weights`` with config fields replaced."""
    return lambda inner: lambda c, beta, seg, mdt: inner(c.replace(**changes), beta, seg, mdt)


def _after_write(change):
    """A memory_update wrapper applying ``change(M_before, z_before, M_after, z_after)`` when it wrote."""
    def wrap(inner):
        def update(eq, c, k, v, M, z):
            M2, z2 = inner(eq, c, k, v, M, z)
            return change(M, z, M2, z2) if k.shape[1] else (M2, z2)
        return update
    return wrap


def _stream_rope(inner):  # angles in the compute dtype, at positions far beyond N
    def rope(a, positions, c):
        d = a.shape[-1]
        inv = c.rope_theta ** (-torch.arange(0, d, 2, dtype=a.dtype) / d)
        ang = positions.to(a.dtype)[:, None] * inv[None, :]
        return apply_rope(a, ang.cos(), ang.sin(), c.rope_style)
    return rope


def _no_eps_read(inner):
    def read(eq, q, M, z, eps, group_size):
        sq = eq.sigma(q.to(M.dtype)).transpose(1, 2)  # (B, H, T, dk)
        num, den = sq @ eq.expand_kv(M, group_size, 1), sq @ eq.expand_kv(z, group_size, 1)[..., None]
        return (num / den).transpose(1, 2)
    return read


def _kv_modulo(inner):  # tiled instead of interleaved: head h reads h % Hkv
    return lambda a, group_size, dim=2: a.repeat(*[group_size if i == dim else 1 for i in range(a.ndim)])


def _no_transpose(inner):  # (B, T, n*d) read as (B, n, T, d), then handed on as (B, T, n, d)
    def split(a, n, d):
        out = inner(a, n, d)
        return out.reshape(out.shape[0], n, out.shape[1], d).transpose(1, 2)
    return split


def _replace(value):
    return lambda inner: value


SWAPS = {
    "gate_swapped": dict(gate_weights=_with_config(gate_on="local")),
    "update_before_read": dict(memory_seen=_replace(lambda before, after: after)),
    "rope_on_memory": dict(memory_qk=_replace(lambda q, k, q_rot, k_rot: (q_rot, k_rot))),
    "gqa_modulo": dict(expand_kv=_kv_modulo),
    "no_eps": dict(memory_read=_no_eps_read),
    "z_not_accumulated": dict(memory_update=_after_write(lambda M, z, M2, z2: (M2, z2 - z))),
    "delta_ignored": dict(memory_update=lambda inner: lambda eq, c, k, v, M, z: inner(
        eq, c.replace(update="linear"), k, v, M, z)),
    "rope_stream_positions": dict(rope=_stream_rope, rope_positions=lambda inner: lambda n, t, seg, N, dev: tuple(
        p + seg * N for p in inner(n, t, seg, N, dev))),
    "rope_call_positions": dict(rope_positions=lambda inner: lambda n, t, seg, N, dev: (
        inner(0, t, seg, N, dev)[0], inner(n, t, seg, N, dev)[1])),  # queries as if the call started a segment
    "scale_d_model": dict(attn_scale=_replace(lambda c: c.scale if c.scale is not None else 1 / math.sqrt(c.d_model))),
    "head_interleave": dict(split_heads=lambda inner: lambda a, n, d: inner(
        a.unflatten(-1, (d, n)).transpose(-1, -2).flatten(-2), n, d),
                            merge_heads=lambda inner: lambda a: inner(a.transpose(-1, -2))),
    "head_no_transpose": dict(split_heads=_no_transpose),
    "shared_gate": dict(gate_weights=lambda inner: lambda c, beta, seg, mdt: inner(
        c, beta[:1].expand_as(beta), seg, mdt)),
    "causal_off_by_one": dict(visible=_replace(lambda n, t, dev: torch.arange(n + t, device=dev)[None, :]
                                               <= (torch.arange(t, device=dev) + n + 1)[:, None])),
    "bf16_state": dict(memory_update=_after_write(
        lambda M, z, M2, z2: (M2.to(torch.bfloat16).to(M2.dtype), z2.to(torch.bfloat16).to(z2.dtype)))),
    "local_only_undeclared": dict(gate_weights=_with_config(first_segment="local_only")),
    "sigma_no_plus_one": dict(sigma=_replace(F.elu)),
    "memory_shared_across_batch": dict(memory_update=_after_write(lambda M, z, M2, z2: (
        M + (M2 - M).sum(0, keepdim=True).expand_as(M), z + (z2 - z).sum(0, keepdim=True).expand_as(z)))),
    "memory_detached": dict(memory_update=_after_write(lambda M, z, M2, z2: (M2.detach(), z2.detach()))),
}
STREAM_BUGS = ("write_partial", "state_not_carried", "no_pending_kv", "memory_in_instance", "z_init_nonzero")
assert set(SWAPS) | set(STREAM_BUGS) == set(MUTANTS) and not set(SWAPS) & set(STREAM_BUGS)


def equations(bugs) -> naive.Equations:
    """naive's equations with the swaps of ``bugs`` applied in MUTANTS order (each wraps the one before)."""
    eq = SPEC
    for bug in (b for b in MUTANTS if b in bugs):
        eq = eq.replace(**{name: wrap(getattr(eq, name)) for name, wrap in SWAPS.get(bug, {}).items()})
    return eq


def check_bugs(bugs) -> tuple:
    """The mutant names of a combination, validated: known names, no masking pair."""
    bugs = tuple(dict.fromkeys(b for b in bugs if b != CONTROL))
    unknown = [b for b in bugs if b not in MUTANTS]
    if unknown:
        raise AttributeError(f"mutants: expected names from {sorted(MUTANTS)} joined by '+', got {unknown}")
    for pair, why in MASKING.items():
        if pair <= set(bugs):
            raise AttributeError(f"mutants: {' and '.join(sorted(pair))} cannot be combined ({why})")
    return bugs


class MutantImpl:
    capabilities = {"delta", "gqa", "rope", "chunked", "canonical_state", "grad",
                    "float64", "float32", "bfloat16", "float16"}

    def __init__(self, config: InfiniConfig, dtype: str = "float32", bug=CONTROL):
        self.c, self.dt = config, getattr(torch, dtype)
        self.bugs = check_bugs(bug.split("+") if isinstance(bug, str) else bug)
        self.eq = equations(self.bugs)
        self.hidden: TorchInfiniState | None = None  # only memory_in_instance reads it

    def forward(self, params, x, state=None):
        with torch.no_grad():
            y, st = self._forward(self._params(params), self._t(x), state)
        return (y.float() if self.dt == torch.bfloat16 else y).numpy(), st

    def grad(self, params, x, dy):
        p = {k: v.requires_grad_(True) for k, v in self._params(params).items()}
        xt = self._t(x).requires_grad_(True)
        y, _ = self._forward(p, xt, None)
        (y * self._t(dy)).sum().backward()
        return {"x": xt.grad, **{k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in p.items()}}

    def _t(self, a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.dt)

    def _params(self, params):  # beta in the memory dtype, like the gate math
        return {k: self._t(v) if k != "beta" else self._t(v).to(memory_dtype(self.dt)) for k, v in params.items()}

    def _forward(self, p, x, state):
        c, bugs = self.c, self.bugs
        if "memory_in_instance" in bugs and state is None:
            state = self.hidden
        if "state_not_carried" in bugs:
            state = None
        if state is None:
            state = TorchInfiniState.zeros(c, x.shape[0], x.dtype, x.device)
            if "z_init_nonzero" in bugs:
                state = TorchInfiniState(state.M, state.z + 1, state.k, state.v, state.segments)
        y, st = naive.forward(c, p, x, state, self.eq)
        if "write_partial" in bugs and st.pending:
            M, z = self.eq.memory_update(self.eq, c, st.k.transpose(1, 2), st.v.transpose(1, 2), st.M, st.z)
            st = TorchInfiniState(M, z, st.k[:, :, :0], st.v[:, :, :0], st.segments + 1)
        if "no_pending_kv" in bugs:
            st = TorchInfiniState(st.M, st.z, st.k[:, :, :0], st.v[:, :, :0], st.segments)
        self.hidden = st
        return y, st


def mutant_factory(bug: str):
    """``make(config, dtype)`` for one mutant, a ``+``-joined combination, or ``CONTROL``."""
    bugs = check_bugs(bug.split("+"))

    def make(config: InfiniConfig, dtype: str = "float32") -> MutantImpl:
        return MutantImpl(config, dtype, bugs)
    make.capabilities = MutantImpl.capabilities
    make.__name__ = bug
    make.bugs = bugs
    return make


control = mutant_factory(CONTROL)
for _name in MUTANTS:
    globals()[_name] = mutant_factory(_name)


def __getattr__(name: str):
    """``mutants:a+b``: a combination of mutants (PEP 562 module attribute)."""
    if "+" in name:
        return mutant_factory(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

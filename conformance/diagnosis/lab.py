"""The diagnosis' laboratory: small configs an implementation accepts (its capabilities, pins and the declared
profile honoured), runs that never fail the suite (NaN passes through, a refusal or a crash makes the
probe inconclusive), and the measures probes compare with.

Probes run in float64 when the implementation declares it (exact arithmetic separates a mistake from
rounding), except those about rounding itself, which run at the checked dtype.
"""
from __future__ import annotations

import numpy as np

from ...reference import InfiniConfig, init_params
from ..guard import Failure, Unsupported
from ..harness import run_impl
from ..transforms import gate_limit

# Relative differences below SAME are "the same"; above DIFFERS, a real difference (by probe dtype).
SAME = {"float64": 1e-9, "float32": 2e-5, "bfloat16": 2e-2, "float16": 3e-3}
DIFFERS = {"float64": 1e-6, "float32": 1e-3, "bfloat16": 0.15, "float16": 3e-2}


class Inconclusive(Exception):
    """A probe could not run (the implementation refused or failed the config it needs)."""


def rel(a, b) -> float:
    """||a - b|| / ||b|| over the entries finite in both: inf when one is finite where the other is not
    (or the shapes differ), NaN when nothing is finite (neither "same" nor "differs")."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    fa, fb = np.isfinite(a), np.isfinite(b)
    if np.any(fa != fb):
        return float("inf")
    if not np.any(fa):
        return float("nan")
    d, n = float(np.linalg.norm((a - b)[fa])), float(np.linalg.norm(b[fa]))
    return d / n if n > 0 else (0.0 if d == 0 else float("inf"))


class Lab:
    def __init__(self, impl, settings):
        self.impl, self.settings = impl, settings
        self.caps, self.pins, self.profile = impl.capabilities, impl.pins, dict(settings.profile)
        self.dtype = "float64" if "float64" in self.caps else settings.dtype
        self.low = settings.dtype  # the checked dtype: for probes about rounding
        self.local_beta = None  # the beta that makes this implementation fully local (set by the gate probe)
        self.memory_beta = None
        self.notes: list[str] = []
        self.facts: dict = {}  # what earlier probes established (gate orientation, head layout, ...)
        self.small = 2  # the head dim of multi-head probes; 4 once a layer refused 2 (rotary-embedding-torch does)

    @property
    def streaming(self) -> bool:
        return "whole_stream" not in self.caps

    @property
    def partial_calls(self) -> bool:
        return "chunked" in self.caps or "whole_stream" in self.caps

    def config(self, H: int = 1, Hkv: int | None = None, dk: int = 4, dv: int = 3, D: int = 5, N: int = 4,
               rope: bool = False, update: str = "linear", theta: float = 10000.0) -> InfiniConfig:
        """A config with these sizes, adjusted to the pins and profile; Inconclusive when impossible."""
        if self.impl.fixed_config is not None:
            raise Inconclusive("the implementation has one fixed config")
        pins = self.pins
        Hkv = H if Hkv is None else Hkv
        if Hkv < H and "gqa" not in self.caps:
            raise Inconclusive("needs grouped-query attention (capability gqa)")
        update = pins.get("update", update)
        if update == "delta" and "delta" not in self.caps:
            raise Inconclusive("needs the delta rule (capability delta)")
        rope_on = rope or "rope_theta" in pins or pins.get("rope") is True
        if rope_on and "rope" not in self.caps and "rope_theta" not in pins and pins.get("rope") is not True:
            if rope:
                raise Inconclusive("needs RoPE (capability rope)")
            rope_on = False
        if rope_on and dk % 2:
            dk += 1
        dv = dk if pins.get("d_value") == "d_key" else dv
        D = H * dk if pins.get("d_model") == "heads" else D
        try:
            return InfiniConfig(d_model=D, n_heads=H, n_kv_heads=Hkv, d_key=dk, d_value=dv, segment_len=N,
                                update=update, rope_theta=pins.get("rope_theta", theta) if rope_on else None,
                                rope_style=pins.get("rope_style", "half"), eps=pins.get("eps", 1e-6),
                                gate_on=self.profile["gate_on"], first_segment=self.profile["first_segment"])
        except ValueError as exc:
            raise Inconclusive(f"no config fits the pins ({exc})") from None

    def params(self, config: InfiniConfig, seed: int = 0, beta=0.0) -> dict:
        p = init_params(config, 1000 + seed)
        p["beta"] = np.broadcast_to(np.asarray(beta, dtype=np.float64), (config.n_heads,)).copy()
        if self.pins.get("shared_gate") is True:
            p["beta"][:] = p["beta"][0]
        return p

    @staticmethod
    def x(config: InfiniConfig, T: int, seed: int = 0, B: int = 1) -> np.ndarray:
        return np.random.default_rng(2000 + seed).standard_normal((B, T, config.d_model))

    def beta(self, config: InfiniConfig, branch: str) -> float:
        """The beta putting this implementation fully on ``branch``: its own, once the gate probe found it."""
        own = self.local_beta if branch == "local" else self.memory_beta
        return own if own is not None else gate_limit(config, branch)

    def run(self, config, params, x, split=None, dtype=None, instance=None, want_state=False):
        """The implementation's Run (NaN allowed); Inconclusive when it refuses or fails the call."""
        split = [x.shape[1]] if split is None else split
        try:
            return run_impl(self.impl, config, params, x, split, dtype or self.dtype, want_state=want_state,
                            instance=instance, finite=False)
        except Unsupported as exc:
            raise Inconclusive(f"refused: {exc}") from None
        except Failure as exc:
            raise Inconclusive(f"failed: {str(exc).splitlines()[0][:200]}") from None

    def same(self, a, b, dtype=None) -> bool:
        return rel(a, b) <= SAME[dtype or self.dtype]

    def differs(self, a, b, dtype=None) -> bool:
        return rel(a, b) > DIFFERS[dtype or self.dtype]

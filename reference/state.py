"""The streaming state of one layer (SPEC.md §4)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import InfiniConfig


@dataclass
class InfiniState:
    """What a layer carries between calls (SPEC.md §4.2).

    M (B, Hkv, dk, dv) and z (B, Hkv, dk): the compressive memory of all completed segments.
    k (B, Hkv, n, dk), v (B, Hkv, n, dv): keys (before RoPE) and values of the n < N tokens
    of the unfinished segment. segments: how many segments have completed.
    """

    M: np.ndarray
    z: np.ndarray
    k: np.ndarray
    v: np.ndarray
    segments: int = 0

    @property
    def pending(self) -> int:
        """Tokens of the unfinished segment (n); the next token sits at this offset."""
        return self.k.shape[2]

    def copy(self) -> "InfiniState":
        return InfiniState(self.M.copy(), self.z.copy(), self.k.copy(), self.v.copy(), int(self.segments))


def init_state(config: InfiniConfig, batch: int) -> InfiniState:
    """The state before a stream's first token: ``M_0 = 0``, ``z_0 = 0``, nothing pending (SPEC.md §4.2)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected an integer >= 1, got {batch!r}")
    c = config
    return InfiniState(
        M=np.zeros((batch, c.n_kv_heads, c.d_key, c.d_value)),
        z=np.zeros((batch, c.n_kv_heads, c.d_key)),
        k=np.zeros((batch, c.n_kv_heads, 0, c.d_key)),
        v=np.zeros((batch, c.n_kv_heads, 0, c.d_value)),
        segments=0,
    )

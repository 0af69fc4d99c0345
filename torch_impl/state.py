"""The streaming state of one torch Infini-attention layer (mirror of reference.InfiniState)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from infini_attention.reference import InfiniConfig, InfiniState

from .functional import memory_dtype as _memory_dtype


@dataclass
class TorchInfiniState:
    """What a layer carries between calls.

    M (B, Hkv, dk, dv), z (B, Hkv, dk): compressive memory of the completed segments,
        kept in float32 (float64 for a float64 layer) whatever the layer's dtype.
    k (B, Hkv, n, dk), v (B, Hkv, n, dv): pre-RoPE keys / values of the n < N tokens of
        the unfinished segment, in the layer's dtype.
    segments: int64 0-d tensor, the number of completed segments (a tensor, not an int,
        so that the state is all tensors and traces/exports as such).
    _pending: internal (no-autograd decoding only): the capacity-N buffers that k and v
        view, so the next call can append in place (see pending.py). Not part of the
        state's value: conversions drop it, and it is ignored unless k, v still are
        exactly its views. Do not modify k or v in place.
    """

    M: torch.Tensor
    z: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    segments: torch.Tensor
    _pending: object = field(default=None, repr=False, compare=False)

    @property
    def pending(self) -> int:
        """n: tokens of the unfinished segment; the next token sits at this offset."""
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.M.shape[0]

    @classmethod
    def zeros(
        cls,
        config: InfiniConfig,
        batch: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        memory_dtype: torch.dtype | None = None,
    ) -> "TorchInfiniState":
        """The state before a stream's first token: M = 0, z = 0, nothing pending."""
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch: expected an integer >= 1, got {batch!r}")
        c, mdt = config, _memory_dtype(dtype, memory_dtype)
        return cls(
            M=torch.zeros(batch, c.n_kv_heads, c.d_key, c.d_value, dtype=mdt, device=device),
            z=torch.zeros(batch, c.n_kv_heads, c.d_key, dtype=mdt, device=device),
            k=torch.zeros(batch, c.n_kv_heads, 0, c.d_key, dtype=dtype, device=device),
            v=torch.zeros(batch, c.n_kv_heads, 0, c.d_value, dtype=dtype, device=device),
            segments=torch.zeros((), dtype=torch.int64, device=device),
        )

    @classmethod
    def from_reference(
        cls,
        state: InfiniState,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        memory_dtype: torch.dtype | None = None,
    ) -> "TorchInfiniState":
        """Convert a reference (NumPy float64) state; dtype is the layer's compute dtype."""
        if not isinstance(state, InfiniState):
            raise ValueError(f"state: expected a reference InfiniState, got {type(state).__name__}")
        mdt = _memory_dtype(dtype, memory_dtype)

        def t(a, dt):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device).to(dt)

        return cls(
            M=t(state.M, mdt),
            z=t(state.z, mdt),
            k=t(state.k, dtype),
            v=t(state.v, dtype),
            segments=torch.tensor(int(state.segments), dtype=torch.int64, device=device),
        )

    def to_reference(self) -> InfiniState:
        """Convert to a reference state (float64 NumPy arrays, int segment counter)."""

        def a(t):
            return t.detach().to(device="cpu", dtype=torch.float64).numpy()

        return InfiniState(a(self.M), a(self.z), a(self.k), a(self.v), int(self.segments.item()))

    def detach(self) -> "TorchInfiniState":
        """Cut the autograd graph here (truncated BPTT across calls)."""
        return TorchInfiniState(
            self.M.detach(), self.z.detach(), self.k.detach(), self.v.detach(), self.segments.detach()
        )

    def to(self, device: torch.device | str) -> "TorchInfiniState":
        """Move to a device; dtypes are kept (they are fixed by the layer's dtype)."""
        return TorchInfiniState(*(t.to(device) for t in (self.M, self.z, self.k, self.v, self.segments)))

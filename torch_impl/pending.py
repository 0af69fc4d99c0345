"""Capacity-N storage of the unfinished segment's keys and values, for fast decoding.

An immutable state would copy all n pending keys/values on every call (torch.cat), so
token-by-token decoding would move O(N) bytes per token on top of the attention itself.
Without autograd, the layer instead keeps them in buffers of capacity N and appends the
new tokens in place; the state's k and v are views of the first n slots.

Safety: a state only appends in place when its own k/v *are* the buffer views and the
buffer has not grown past them (`claimed == n`). Continuing twice from the same state
(branching, beam search) therefore copies on the second call instead of overwriting what
the first branch's state sees; older states only ever view slots below their own n.
With RoPE, the rotated keys are kept alongside (their rotation depends only on the
offset), so pending keys are not re-rotated on every call.
"""

from __future__ import annotations

import torch


class PendingBuffer:
    """k (B, Hkv, N, dk), v (B, Hkv, N, dv), k_rot (B, Hkv, N, dk) or None; slots
    [0, claimed) hold the pending tokens of the newest state built on this buffer."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, k_rot: torch.Tensor | None, claimed: int):
        self.k, self.v, self.k_rot, self.claimed = k, v, k_rot, claimed

    @classmethod
    def allocate(cls, like_k: torch.Tensor, like_v: torch.Tensor, capacity: int, rope: bool) -> "PendingBuffer":
        """Empty buffers shaped after like_k (B, t, Hkv, dk) and like_v (B, t, Hkv, dv)."""
        B, _, Hkv, dk = like_k.shape
        dv = like_v.shape[-1]
        k = like_k.new_empty(B, Hkv, capacity, dk)  # (B, Hkv, N, dk)
        v = like_v.new_empty(B, Hkv, capacity, dv)  # (B, Hkv, N, dv)
        return cls(k, v, like_k.new_empty(B, Hkv, capacity, dk) if rope else None, 0)

    def owns(self, k: torch.Tensor, v: torch.Tensor) -> bool:
        """True when k, v are exactly this buffer's first `claimed` slots (so appending is safe)."""
        n = k.shape[2]
        return (
            n == self.claimed
            and k.data_ptr() == self.k.data_ptr() and v.data_ptr() == self.v.data_ptr()
            and k.stride() == self.k.stride() and v.stride() == self.v.stride()
            # inference tensors may only be written inside inference mode
            and (torch.is_inference_mode_enabled() or not self.k.is_inference())
        )

    def append(self, k: torch.Tensor, v: torch.Tensor, k_rot: torch.Tensor | None) -> None:
        """Write (B, t, Hkv, d) keys/values into slots [claimed, claimed + t)."""
        a, b = self.claimed, self.claimed + k.shape[1]
        self.k[:, :, a:b] = k.transpose(1, 2)  # (B, Hkv, t, dk)
        self.v[:, :, a:b] = v.transpose(1, 2)  # (B, Hkv, t, dv)
        if self.k_rot is not None:
            self.k_rot[:, :, a:b] = k_rot.transpose(1, 2)
        self.claimed = b

    def views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The claimed slots in the (B, L, Hkv, d) timeline layout (views, no copies)."""
        n = self.claimed
        k = self.k[:, :, :n].transpose(1, 2)  # (B, n, Hkv, dk)
        v = self.v[:, :, :n].transpose(1, 2)  # (B, n, Hkv, dv)
        k_rot = None if self.k_rot is None else self.k_rot[:, :, :n].transpose(1, 2)
        return k, v, k_rot

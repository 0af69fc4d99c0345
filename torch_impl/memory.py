"""The compressive memory over one call's timeline (SPEC.md §7, Eq. 6-7), for `InfiniAttention`.

The linear rule without truncation is an exclusive prefix sum of per-segment increments (one
batched matmul for all segments); the delta rule, or truncated BPTT (``detach_every``), loops over
segments, never tokens.
"""
from __future__ import annotations

import torch

from infini_attention.reference import InfiniConfig

from . import functional as Fn
from .state import TorchInfiniState


def memory_per_segment(c: InfiniConfig, st: TorchInfiniState, k: torch.Tensor, v: torch.Tensor, C: int, S: int,
                       every: int | None, mdt: torch.dtype):
    """Memory before each of the S touched segments, and after the C completed ones.

    k (B, L, Hkv, dk), v (B, L, Hkv, dv) timeline keys/values (pre-RoPE).
    Returns m_before (B, S, Hkv, dk, dv), z_before (B, S, Hkv, dk), m_end, z_end."""
    B, _, Hkv, dk = k.shape
    dv = v.shape[-1]
    N = c.segment_len
    m0, z0 = st.M, st.z
    if C == 0:
        return m0[:, None], z0[:, None], m0, z0
    sk = Fn.sigma(k[:, :C * N].to(mdt)).reshape(B, C, N, Hkv, dk)  # (B, C, N, Hkv, dk)
    vc = v[:, :C * N].to(mdt).reshape(B, C, N, Hkv, dv)  # (B, C, N, Hkv, dv)
    sk = sk.permute(0, 3, 1, 2, 4)  # (B, Hkv, C, N, dk)
    vc = vc.permute(0, 3, 1, 2, 4)  # (B, Hkv, C, N, dv)
    if c.update == "linear" and every is None:
        dm, dz = Fn.linear_updates(sk, vc)  # (B, Hkv, C, dk, dv), (B, Hkv, C, dk)
        # exclusive prefix sum, accumulated in the reference's order (M0 + dM0) + dM1 ...
        ms = torch.cat((m0[:, :, None], dm), dim=2).cumsum(dim=2)  # (B, Hkv, C+1, dk, dv)
        zs = torch.cat((z0[:, :, None], dz), dim=2).cumsum(dim=2)  # (B, Hkv, C+1, dk)
        ms, zs = ms.transpose(1, 2), zs.transpose(1, 2)  # (B, C+1, Hkv, ...)
        # the end state is copied out so it does not pin the (C+1)-long buffers
        return ms[:, :S], zs[:, :S], ms[:, C].contiguous(), zs[:, C].contiguous()
    g0 = int(st.segments) if every is not None else 0  # host sync only with detach_every
    m, z = m0, z0
    if every is not None and g0 % every == 0:
        m, z = m.detach(), z.detach()
    ms, zs = [m], [z]
    for i in range(C):  # a loop over segments, never tokens
        if c.update == "delta":
            m, z = Fn.delta_update(m, z, sk[:, :, i], vc[:, :, i], c.eps)
        else:
            m = m + sk[:, :, i].transpose(-1, -2) @ vc[:, :, i]  # (B, Hkv, dk, dv)
            z = z + sk[:, :, i].sum(dim=-2)  # (B, Hkv, dk)
        if every is not None and (g0 + i + 1) % every == 0:
            m, z = m.detach(), z.detach()  # truncated BPTT through the memory
        ms.append(m)
        zs.append(z)
    return torch.stack(ms[:S], dim=1), torch.stack(zs[:S], dim=1), m, z

"""The torch modules that are traced into ONNX: one call = one *piece* of one segment.

Contract of every call (the runtime, ``session.py``, splits a stream so that it holds):
the pending length n (dim 2 of ``past_key_values.{i}.key``) plus the chunk length t is at
most the segment length N. Then the graph needs only shape arithmetic, no control flow:

    L    = n + t                  positions of the segment seen so far
    done = (L // N) * L           N if this piece completes the segment, else 0
    memory update  from keys/values [:done]   (an empty slice writes exactly nothing)
    present k/v    = keys/values   [done:]    (empty after a completed segment)
    present_segments = past_segments + L // N

So a decode step (t = 1) never pays for the memory write except on the segment's last
token, and a prefill call of N tokens writes exactly once. The math is the torch
implementation's primitives (``torch_impl.functional``); the local attention is written
here with an explicit bottom-right causal mask, because the torch layer picks its SDPA
variant from Python-level shape tests, which tracing would freeze.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..reference import InfiniConfig, LMConfig, param_shapes
from ..torch_impl import functional as Fn
from ..torch_impl.lm import rms_norm

STATE_DTYPE = torch.float32  # M, z and pending k/v cross the graph boundary in float32


def _const(arr, dtype) -> torch.Tensor:
    """Round in NumPy (float64 -> dtype directly; torch may round float64 -> float16 via float32)."""
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[dtype]
    return torch.from_numpy(np.asarray(arr, dtype=np.float64).astype(np_dtype))


class LayerStep(nn.Module):
    """One Infini-attention layer, one piece: (x, segments, k, v, M, z) -> (y, segments', k', v', M', z').

    x (B, t, D) compute dtype; segments () int64; k (B, Hkv, n, dk), v (B, Hkv, n, dv),
    M (B, Hkv, dk, dv), z (B, Hkv, dk) float32. Requires n + t <= N (io_spec.py).
    """

    def __init__(self, config: InfiniConfig, params: dict, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.c, self.dtype = config, dtype
        for name in param_shapes(config):
            self.register_buffer(name, _const(params[name], dtype if name != "beta" else STATE_DTYPE))
        if config.rope_theta is not None:
            cos, sin = Fn.rope_tables(config.segment_len, config.d_key, config.rope_theta, torch.float64,
                                      torch.device("cpu"))
            self.register_buffer("rope_cos", _const(cos.numpy(), dtype))  # (N, dk/2), angles in float64
            self.register_buffer("rope_sin", _const(sin.numpy(), dtype))

    def forward(self, x, past_segments, past_k, past_v, past_m, past_z, t=None):
        c, dt = self.c, self.dtype
        H, Hkv, G, dk, dv, N = c.n_heads, c.n_kv_heads, c.group_size, c.d_key, c.d_value, c.segment_len
        # sizes are read off graph inputs only (the LM passes t from input_ids; see _local_attention)
        t, n = (x.shape[1] if t is None else t), past_k.shape[2]
        L = n + t
        flag = L // N  # 1 when this piece completes the segment (n + t <= N by contract)
        done = flag * L

        q = (x @ self.wq).unflatten(-1, (H, dk))  # (B, t, H, dk)
        k_new = (x @ self.wk).unflatten(-1, (Hkv, dk))  # (B, t, Hkv, dk)
        v_new = (x @ self.wv).unflatten(-1, (Hkv, dv))  # (B, t, Hkv, dv)
        k = torch.cat((past_k.transpose(1, 2).to(dt), k_new), dim=1)  # (B, L, Hkv, dk) pre-RoPE
        v = torch.cat((past_v.transpose(1, 2).to(dt), v_new), dim=1)  # (B, L, Hkv, dv)

        q_loc, k_loc = q, k
        if c.rope_theta is not None:  # positions are offsets within the segment
            q_loc = Fn.apply_rope(q, self.rope_cos[n:L], self.rope_sin[n:L], c.rope_style)
            k_loc = Fn.apply_rope(k, self.rope_cos[:L], self.rope_sin[:L], c.rope_style)
        a_dot = _local_attention(q_loc, k_loc, v, n, t, c.attn_scale, G)  # (B, Hkv, G, t, dv)

        mdt = STATE_DTYPE
        sq = Fn.sigma(q.to(mdt)).transpose(1, 2).unflatten(1, (Hkv, G))  # (B, Hkv, G, t, dk) pre-RoPE
        a_mem = _memory_read(sq, past_m, past_z, c.eps)  # (B, Hkv, G, t, dv)
        s = torch.sigmoid(self.beta)  # (H,)
        w_mem, w_dot = (s, 1 - s) if c.gate_on == "memory" else (1 - s, s)
        if c.first_segment == "local_only":  # the stream's first segment is plain local attention
            first = (past_segments == 0).to(mdt)  # 0-d
            w_mem, w_dot = w_mem * (1 - first), w_dot * (1 - first) + first
        w_mem, w_dot = (w.reshape(Hkv, G, 1, 1) for w in (w_mem, w_dot))  # head h = kv * G + g
        a = w_mem * a_mem + w_dot * a_dot.to(mdt)  # (B, Hkv, G, t, dv)
        a = a.to(dt).flatten(1, 2).transpose(1, 2)  # (B, t, H, dv)
        y = a.to(dt).flatten(2) @ self.wo  # (B, t, D)

        sk = Fn.sigma(k[:, :done].to(mdt)).transpose(1, 2)  # (B, Hkv, done, dk): done is 0 or N
        vd = v[:, :done].to(mdt).transpose(1, 2)  # (B, Hkv, done, dv)
        m, z = _memory_write(past_m, past_z, sk, vd, c.eps, c.update == "delta")
        present_k = k[:, done:].transpose(1, 2).to(STATE_DTYPE)  # (B, Hkv, L - done, dk)
        present_v = v[:, done:].transpose(1, 2).to(STATE_DTYPE)  # (B, Hkv, L - done, dv)
        segments = (past_segments + flag).reshape(())  # int64 scalar, like past_segments
        return y, segments, present_k, present_v, m, z


def _memory_write(m, z, sk, v, eps: float, delta: bool):
    """SPEC.md §7: ``M += sigma(K)^T V`` (linear) or ``sigma(K)^T (V - sigma(K) M / max(sigma(K) z, eps))``
    (delta), ``z += sum_t sigma(K_t)``, for the ``done`` (0 or N) keys of a completed segment.

    sk (B, Hkv, done, dk) = sigma(K), v (B, Hkv, done, dv). Written with MatMul only (no ReduceSum,
    which ONNX Runtime returns empty, not 0, over an empty axis), so done = 0 adds exactly 0.
    """
    if delta:  # what the memory already returns for these keys (Eq. 7), as torch_impl.delta_update
        v = v - (sk @ m) / (sk @ z[..., None]).clamp_min(eps)  # (B, Hkv, done, dv)
    ones = torch.ones_like(v[..., :1])  # (B, Hkv, done, 1)
    dmz = sk.transpose(-1, -2) @ torch.cat((v, ones), dim=-1)  # (B, Hkv, dk, dv + 1)
    return m + dmz[..., :-1], z + dmz[..., -1]


def _memory_read(sq, m, z, eps: float):
    """Eq. 5 (SPEC.md §6): ``A_mem = sigma(q) M / max(sigma(q) . z, eps)`` as two MatMuls.

    sq (B, Hkv, G, t, dk) = sigma(q) in float32, m (B, Hkv, dk, dv), z (B, Hkv, dk) -> (B, Hkv, G, t, dv).
    """
    num = sq @ m[:, :, None]  # (B, Hkv, G, t, dv)
    den = sq @ z[:, :, None, :, None]  # (B, Hkv, G, t, 1)
    return num / den.clamp_min(eps)


def _local_attention(q, k, v, n, t, scale: float, G: int):
    """Causal attention of t queries at offsets n.. n+t-1 over keys 0 .. L-1 (L = n + t).

    q (B, t, H, dk), k (B, L, Hkv, dk), v (B, L, Hkv, dv). Query head h
    reads key/value head h // G: heads are split (Hkv, G) with no copy of k or v.
    Returns (B, Hkv, G, t, dv).
    """
    Hkv, L = k.shape[2], n + t  # sizes from the graph inputs only: the tracer may freeze shapes read
    # off intermediate tensors (seen with unflatten), which would make chunk or past_len static
    qg = q.transpose(1, 2).unflatten(1, (Hkv, G))  # (B, Hkv, G, t, dk)
    kt = k.permute(0, 2, 3, 1)[:, :, None]  # (B, Hkv, 1, dk, L)
    vt = v.transpose(1, 2)[:, :, None]  # (B, Hkv, 1, L, dv)
    scores = (qg @ kt) * scale  # (B, Hkv, G, t, L)
    rows = torch.arange(t, device=q.device)[:, None] + n  # (t, 1) query offsets
    visible = torch.arange(L, device=q.device)[None, :] <= rows  # (t, L); the diagonal is visible
    scores = scores.masked_fill(~visible, float("-inf"))
    return F.softmax(scores, dim=-1) @ vt  # (B, Hkv, G, t, dv)


class LMStep(nn.Module):
    """The LM of SPEC.md §9, one piece: (input_ids, segments, per-layer k, v, M, z) -> (logits, ...)."""

    def __init__(self, config: LMConfig, params: dict, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.c, self.dtype = config, dtype
        for name in ("embed", "final_norm", "lm_head"):
            self.register_buffer(name, _const(params[name], dtype))
        self.layers = nn.ModuleList()
        for i in range(config.n_layers):
            attn = {n: params[f"layers.{i}.attn.{n}"] for n in param_shapes(config.attn)}
            blk = nn.Module()  # buffer names = reference names: layers.{i}.attn.wq, layers.{i}.mlp.w_up, ...
            blk.attn = LayerStep(config.attn, attn, dtype)
            blk.mlp = nn.Module()
            for name in ("attn_norm", "mlp_norm"):
                blk.register_buffer(name, _const(params[f"layers.{i}.{name}"], dtype))
            for name in ("w_gate", "w_up", "w_down"):
                blk.mlp.register_buffer(name, _const(params[f"layers.{i}.mlp.{name}"], dtype))
            self.layers.append(blk)

    def forward(self, input_ids, past_segments, *past):
        eps = self.c.norm_eps
        x = F.embedding(input_ids, self.embed)  # (B, t, D)
        presents, segments, t = [], past_segments, input_ids.shape[1]
        for i, blk in enumerate(self.layers):
            k, v, m, z = past[4 * i: 4 * i + 4]
            a, segments, k, v, m, z = blk.attn(rms_norm(x, blk.attn_norm, eps), past_segments, k, v, m, z, t)
            h = x + a
            g = rms_norm(h, blk.mlp_norm, eps)
            x = h + (F.silu(g @ blk.mlp.w_gate) * (g @ blk.mlp.w_up)) @ blk.mlp.w_down
            presents += [k, v, m, z]
        logits = (rms_norm(x, self.final_norm, eps) @ self.lm_head).to(torch.float32)  # (B, t, V)
        return (logits, segments, *presents)

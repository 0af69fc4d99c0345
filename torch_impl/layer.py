"""InfiniAttention: one Infini-attention layer as a torch nn.Module (reference/SPEC.md).

A call continues the stream where `state` left it. The call's timeline is the n pending
tokens followed by the T new ones (L = n + T positions, starting on a segment boundary).
It is processed in at most three pieces, each batched over whole segments:
  head    the segment holding the pending tokens (only if n > 0): new queries attend to
          pending + new keys with a bottom-right causal mask;
  middle  F whole segments of new tokens, block layout (B*F, H, N, d), SDPA is_causal;
  tail    the last, unfinished segment of new tokens (0 < r < N tokens), SDPA is_causal.
Memory reads of all pieces use M, z as they stood before each segment: an exclusive
prefix sum of the per-segment increments for the linear rule, a loop over segments
(never tokens) for the delta rule or when detach_every is set.
Queries of pending tokens are never recomputed. Without autograd, pending keys/values
live in capacity-N buffers that decoding calls append to in place (pending.py), and the
gated output is written straight into one (B, T, H, dv) buffer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from infini_attention.reference import ATTN_PARAMS, InfiniConfig, InfiniState
from infini_attention.reference import layer_param_shapes as _param_shapes

from . import functional as Fn
from . import naive
from .params import load_arrays, to_numpy
from .memory import memory_per_segment
from .pending import PendingBuffer
from .state import TorchInfiniState
from .validation import check_config, check_detach_every, check_dtype, check_state, check_state_dtype, check_x

PARAM_NAMES = ATTN_PARAMS
_DEFAULT = object()


def timeline_pieces(n: int, L: int, N: int) -> list[tuple[int, int, int]]:
    """(start, end, segment blocks) of the head, middle and tail pieces of a timeline of L positions
    whose first n are pending (module docstring); each piece's queries are batched over its blocks."""
    p0 = min(N, L) if n > 0 else 0  # end of the head piece
    full = (L - p0) // N  # whole segments in the middle piece
    p1 = p0 + full * N  # start of the tail piece
    pieces = [(n, p0, 1)] if n > 0 else []
    if full > 0:
        pieces.append((p0, p1, full))
    if p1 < L:
        pieces.append((p1, L, 1))
    return pieces


class InfiniAttention(nn.Module):
    """Parameters have the reference layouts: wq (D, H*dk), wk (D, Hkv*dk), wv (D, Hkv*dv),
    wo (H*dv, D), beta (H,); head h owns columns h*d:(h+1)*d. No biases.

    detach_every: None (full BPTT through the memory) or k: the memory is detached each
    time the stream's completed-segment count reaches a multiple of k.
    check_values: run the input checks that read tensor values (NaN/Inf in x and state,
    state.segments >= 0): one reduction per tensor and a host sync per call. Shape and dtype
    checks always run. Turn off for tracing/export or when inputs are known good.
    state_dtype: dtype of M and z; None is float32 (float64 for a float64 layer). torch.float64
    keeps the memory absorbing far beyond 1e9 tokens (functional.memory_dtype, SPEC.md §11).
    """

    def __init__(
        self,
        config: InfiniConfig,
        *,
        detach_every: int | None = None,
        check_values: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        state_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.config = check_config(config)
        self.state_dtype = check_state_dtype(state_dtype, check_dtype(dtype) or torch.get_default_dtype())
        self.detach_every = check_detach_every(detach_every)
        self.check_values = check_values
        kw = {"dtype": dtype, "device": device}
        for name, shape in _param_shapes(config).items():
            setattr(self, name, nn.Parameter(torch.empty(shape, **kw)))
        self.reset_parameters()
        self._rope_cache: dict = {}
        self.piece_mode = False  # set by `piece_mode(model)` while the exporter traces

    def reset_parameters(self) -> None:
        """N(0, 1/fan_in) weights and beta = 0 (an even gate), as reference.init_params."""
        with torch.no_grad():
            for name in ("wq", "wk", "wv", "wo"):
                w = getattr(self, name)
                w.normal_(0.0, w.shape[0] ** -0.5)
            self.beta.zero_()

    # ------------------------------------------------------------ numpy parameter dicts

    @classmethod
    def from_numpy(cls, config: InfiniConfig, params: dict, *, dtype=torch.float64, device=None, **kw):
        """Build a layer holding the reference parameter dict (default dtype float64: exact)."""
        layer = cls(config, dtype=dtype, device=device, **kw)
        layer.load_numpy_params(params)
        return layer

    def load_numpy_params(self, params: dict, prefix: str = "params") -> None:
        """Copy a reference-layout dict {wq, wk, wv, wo, beta} into the parameters."""
        load_arrays(self, self.config, params, prefix)

    def numpy_params(self) -> dict[str, np.ndarray]:
        """The parameters as a reference-layout dict of float64 arrays (exact for any dtype)."""
        return {n: to_numpy(getattr(self, n)) for n in PARAM_NAMES}

    # ---------------------------------------------------------- safetensors (pretrained.py)

    def save_pretrained(self, directory):
        """``directory``/config.json + model.safetensors (reference names, this layer's dtype)."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, device=None, **kw):
        """The layer saved by ``save_pretrained`` (a directory, or a self-describing .safetensors file)."""
        from .pretrained import from_pretrained

        return from_pretrained(cls, path, dtype=dtype, device=device, **kw)

    # ------------------------------------------------------------------------ state

    @property
    def memory_dtype(self) -> torch.dtype:
        """dtype of M and z (``state_dtype``, else float32 or float64 by the layer's dtype)."""
        return Fn.memory_dtype(self.wq.dtype, self.state_dtype)

    def init_state(self, batch: int) -> TorchInfiniState:
        return TorchInfiniState.zeros(self.config, batch, dtype=self.wq.dtype, device=self.wq.device,
                                      memory_dtype=self.memory_dtype)

    def state_from_reference(self, state: InfiniState) -> TorchInfiniState:
        return TorchInfiniState.from_reference(state, dtype=self.wq.dtype, device=self.wq.device,
                                               memory_dtype=self.memory_dtype)

    # ---------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, state=None, *, detach_every=_DEFAULT):
        """x (B, T, D) -> (y (B, T, D), new TorchInfiniState). The input state is not modified."""
        c = self.config
        if self.piece_mode:  # one segment piece per call, the plain form (naive.py): what ONNX export traces
            return naive.segment_piece(c, {n: getattr(self, n) for n in PARAM_NAMES}, x, state)
        dt = self.wq.dtype
        x = check_x(c, x, dt, self.check_values)
        B, T, _ = x.shape
        every = self.detach_every if detach_every is _DEFAULT else check_detach_every(detach_every)
        st = self.init_state(B) if state is None else check_state(c, state, B, dt, self.wq.device, self.check_values,
                                                                  self.memory_dtype)
        if T == 0:
            return x.new_zeros(B, 0, c.d_model), st
        H, Hkv, dk, dv, N = c.n_heads, c.n_kv_heads, c.d_key, c.d_value, c.segment_len
        mdt = self.memory_dtype
        q = (x @ self.wq).view(B, T, H, dk)  # (B, T, H, dk)
        k = (x @ self.wk).view(B, T, Hkv, dk)  # (B, T, Hkv, dk)
        v = (x @ self.wv).view(B, T, Hkv, dv)  # (B, T, Hkv, dv)
        k, v, k_rot, buf = self._timeline(st, k, v)  # (B, L, Hkv, d): pending tokens, then new ones
        L = k.shape[1]
        C = L // N  # segments completed by this call
        m_before, z_before, m_end, z_end = memory_per_segment(c, st, k, v, C, -(-L // N), every, mdt)
        a = self._attend(q, k, v, k_rot, st, m_before, z_before, mdt)  # (B, T, H*dv)
        y = a @ self.wo  # (B, T, D)
        return y, self._next_state(st, k, v, C, buf, m_end, z_end)

    def _timeline(self, st: TorchInfiniState, k: torch.Tensor, v: torch.Tensor):
        """The call's keys/values (B, L, Hkv, d): the state's n pending tokens, then the T new ones.

        Returns (k, v, k_rot, buf): k_rot (the rotated keys) and buf (the PendingBuffer holding
        them) only on the decode fast path, else None."""
        c, n, N = self.config, st.pending, self.config.segment_len
        if not torch.is_grad_enabled() and n + k.shape[1] < N:
            # The call stays inside the unfinished segment (decoding): append to the
            # capacity-N pending buffer in place instead of concatenating (pending.py).
            buf = st._pending if st._pending is not None and st._pending.owns(st.k, st.v) else None
            if buf is None:
                buf = PendingBuffer.allocate(k, v, N, c.rope_theta is not None)
                if n > 0:
                    pk = st.k.transpose(1, 2)  # (B, n, Hkv, dk)
                    buf.append(pk, st.v.transpose(1, 2), self._rope_keys(pk, 0))
            buf.append(k, v, self._rope_keys(k, n))
            return (*buf.views(), buf)  # (B, L, Hkv, d) views of the buffers
        if n > 0:  # the pending keys/values open the timeline
            k = torch.cat((st.k.transpose(1, 2), k), dim=1)  # (B, L, Hkv, dk)
            v = torch.cat((st.v.transpose(1, 2), v), dim=1)  # (B, L, Hkv, dv)
        return k, v, None, None

    def _gate_weights(self, st: TorchInfiniState, mdt):
        """(w_mem, w_dot) per head (H,) for every segment, and for the stream's first segment."""
        c = self.config
        s = torch.sigmoid(self.beta.to(mdt))  # (H,)
        w_mem, w_dot = (s, 1 - s) if c.gate_on == "memory" else (1 - s, s)
        if c.first_segment != "local_only":
            return w_mem, w_dot, w_mem, w_dot
        # The stream's first segment (none completed yet) is plain local attention.
        # A tensor condition, not int(): keeps the forward free of host syncs.
        first = (st.segments == 0).to(mdt)  # 0-d
        return w_mem, w_dot, w_mem * (1 - first), w_dot * (1 - first) + first

    def _attend(self, q, k, v, k_rot, st, m_before, z_before, mdt) -> torch.Tensor:
        """Gated local + memory attention of the T new queries, piece by piece -> (B, T, H*dv)."""
        c = self.config
        B, T, H, dk = q.shape
        Hkv, dv, N, n = c.n_kv_heads, c.d_value, c.segment_len, st.pending
        dt, dev = q.dtype, q.device
        w_mem, w_dot, w_mem_first, w_dot_first = self._gate_weights(st, mdt)
        # Without autograd the pieces are gated straight into one (B, T, H, dv) buffer
        # (out= / in-place ops: no concatenation, no extra copies); with autograd, out of place.
        inplace = not torch.is_grad_enabled()
        abuf = torch.empty(B, T, H, dv, dtype=dt, device=dev) if inplace else None  # (B, T, H, dv)
        outs = []
        for t0, t1, blocks in timeline_pieces(n, n + T, N):
            seg0 = t0 // N  # timeline index of the piece's first segment
            ln = (t1 - t0) // blocks  # queries per block
            ks = seg0 * N  # keys start at the start of the piece's first segment
            qa, qb = t0 - n, t1 - n  # the queries' indices among the new tokens
            q_p = q[:, qa:qb].reshape(B * blocks, ln, H, dk)  # (B*blocks, ln, H, dk)
            k_p = k[:, ks:t1].reshape(B * blocks, -1, Hkv, dk)  # (B*blocks, lk, Hkv, dk)
            v_p = v[:, ks:t1].reshape(B * blocks, -1, Hkv, dv)  # (B*blocks, lk, Hkv, dv)
            # memory reads use the queries before RoPE
            sq_p = Fn.sigma(q_p.to(mdt)).view(B, blocks, ln, H, dk)  # (B, blocks, ln, H, dk)
            if c.rope_theta is not None:  # positions = offsets within the segment
                lk = k_p.shape[1]
                cos, sin = self._rope(dt, dev)
                q_p = Fn.apply_rope(q_p, cos[lk - ln:lk], sin[lk - ln:lk], c.rope_style)
                # the pending buffer already holds rotated keys (then this is the only piece)
                k_p = k_rot if k_rot is not None else Fn.apply_rope(k_p, cos[:lk], sin[:lk], c.rope_style)
            a_dot = Fn.local_attention(q_p, k_p, v_p, c.attn_scale)  # (B*blocks, ln, H, dv)
            a_dot = a_dot.view(B, blocks, ln, H, dv)  # (B, blocks, ln, H, dv)
            wm = w_mem.expand(blocks, H)  # (blocks, H) per-segment gate weights
            wd = w_dot.expand(blocks, H)
            if seg0 == 0:  # this piece starts with the timeline's first segment
                wm = torch.cat((w_mem_first.expand(1, H), wm[1:]))
                wd = torch.cat((w_dot_first.expand(1, H), wd[1:]))
            out = abuf[:, qa:qb].view(B, blocks, ln, H, dv) if inplace else None
            a = Fn.gated_output(a_dot, wd, sq_p, m_before[:, seg0:seg0 + blocks],
                                z_before[:, seg0:seg0 + blocks], wm, c.eps, out)  # (B, blocks, ln, H, dv)
            outs.append(a.reshape(B, blocks * ln, H * dv))  # (B, t1 - t0, H*dv)
        if inplace:
            return abuf.view(B, T, H * dv)  # (B, T, H*dv)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (B, T, H*dv)

    def _next_state(self, st, k, v, C, buf, m_end, z_end) -> TorchInfiniState:
        """The state after the call: memory after the C completed segments, and the pending
        keys/values (B, Hkv, r, d) of the r = L - C*N tokens of the unfinished segment."""
        N = self.config.segment_len
        r = k.shape[1] - C * N
        if buf is None and not torch.is_grad_enabled() and 0 < r:
            # seed a pending buffer so that the decoding calls that follow append in place
            buf = PendingBuffer.allocate(k, v, N, self.config.rope_theta is not None)
            buf.append(k[:, C * N:], v[:, C * N:], self._rope_keys(k[:, C * N:], 0))
        if buf is not None:
            k_pend, v_pend = buf.k[:, :, :r], buf.v[:, :, :r]  # views of the buffers
        else:  # copies, so the state does not pin the whole call's k/v
            k_pend = k[:, C * N:].transpose(1, 2).contiguous()  # (B, Hkv, r, dk)
            v_pend = v[:, C * N:].transpose(1, 2).contiguous()  # (B, Hkv, r, dv)
        return TorchInfiniState(M=m_end, z=z_end, k=k_pend, v=v_pend, segments=st.segments + C, _pending=buf)

    def _rope_keys(self, k: torch.Tensor, start: int) -> torch.Tensor | None:
        """k (B, t, Hkv, dk) at offsets start .. start+t-1, rotated; None without RoPE."""
        if self.config.rope_theta is None:
            return None
        cos, sin = self._rope(k.dtype, k.device)
        t = k.shape[1]
        return Fn.apply_rope(k, cos[start:start + t], sin[start:start + t], self.config.rope_style)

    def _rope(self, dtype, device):
        key = (dtype, device)
        if key not in self._rope_cache:
            c = self.config
            # normal tensors even when first built under inference_mode, so that the cached
            # tables can later take part in autograd
            with torch.inference_mode(False):
                self._rope_cache[key] = Fn.rope_tables(c.segment_len, c.d_key, c.rope_theta, dtype, device)
        return self._rope_cache[key]

    def extra_repr(self) -> str:
        return f"config={self.config}, detach_every={self.detach_every}"

"""Adapter for the third-party ``infini-transformer-pytorch`` (PyPI, 0.2.x): its ``CausalAttention`` layer.

    pip install 'infini-attention[thirdparty]'
    infini conformance --impl infini_attention.conformance.adapters.infini_transformer_pytorch:make \
        --profile gate_on=local,first_segment=local_only

What the adapter maps (SPEC.md §3.1): ``to_qkv.weight = concat(wq, wk, wv).T`` (their
``'b n (qkv h d)'`` split is the spec's head layout), ``to_out.weight = wo.T``, ``head_gates =
beta``. Their layer applies an RMSNorm to its input first; the spec's layer has none (the LM's
pre-norm is outside the layer, §9), so the adapter replaces it by the identity. What the library
fixes, declared as ``config_pins``: RoPE always on (rotary-embedding-torch: theta 10000,
interleaved pairs), d_value = d_key, eps 1e-10; no GQA, scale 1/sqrt(d_key). Streaming is their
own API: one call per segment piece with ``cached_kv`` (pending keys/values) and
``past_memories``; ``return_new_memories=True`` exactly when a piece completes its segment.
"""
from __future__ import annotations

import numpy as np
import torch

from ...reference import InfiniConfig, pieces
from ..contract import NotSupported

PINS = {"rope_theta": 10000.0, "rope_style": "interleaved", "d_value": "d_key", "eps": 1e-10}


class ThirdPartyState:
    """Their streaming state: cached_kv (2, B, H, n, d) or None, past_memories (M, z) or None."""

    def __init__(self, cached_kv, memories, pending: int, batch: int, config: InfiniConfig, dtype):
        self.cached_kv, self.memories, self.pending = cached_kv, memories, pending
        c = config
        self._zeros = (torch.zeros(batch, c.n_heads, c.d_key, c.d_value, dtype=dtype),
                       torch.zeros(batch, c.n_heads, c.d_key, dtype=dtype))

    @property
    def M(self):
        return self.memories.kv_mem if self.memories is not None else self._zeros[0]

    @property
    def z(self):
        return self.memories.k_norm if self.memories is not None else self._zeros[1]


class InfiniTransformerPytorch:
    capabilities = {"delta", "rope", "chunked", "canonical_state", "grad", "float32", "float64"}
    config_pins = PINS

    def __init__(self, config: InfiniConfig, dtype: str = "float32"):
        from infini_transformer_pytorch.infini_transformer import CausalAttention

        c = config
        if c.n_kv_heads != c.n_heads:
            raise NotSupported("no grouped-query attention (n_kv_heads must equal n_heads)")
        if c.d_value != c.d_key or c.scale is not None:
            raise NotSupported("one head dim for keys and values, scale 1/sqrt(d_key)")
        if c.d_key == 2:  # rotary-embedding-torch 0.9: theta *= factor ** (dim / (dim - 2)) divides by zero
            raise NotSupported("d_key = 2 crashes rotary-embedding-torch (ZeroDivisionError)")
        if (c.rope_theta, c.rope_style, c.eps) != (PINS["rope_theta"], PINS["rope_style"], PINS["eps"]):
            raise NotSupported("RoPE is always on (theta 10000, interleaved) and eps is 1e-10")
        self.config, self.dtype = c, getattr(torch, dtype)
        self.layer = CausalAttention(c.d_model, dim_head=c.d_key, heads=c.n_heads,
                                     use_mem_delta_rule=c.update == "delta").to(self.dtype).eval()
        self.layer.norm = torch.nn.Identity()  # the spec's layer has no input norm (SPEC.md §9 puts it outside)
        self._params = None

    def load(self, params) -> None:
        if params is self._params:
            return
        t = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)).to(self.dtype) for k, v in params.items()}
        with torch.no_grad():
            self.layer.to_qkv.weight.copy_(torch.cat((t["wq"], t["wk"], t["wv"]), dim=1).T)
            self.layer.to_out.weight.copy_(t["wo"].T)
            self.layer.fastweight_mem.head_gates.copy_(t["beta"])
        self._params = params

    def _stream(self, x: torch.Tensor, state):
        c, B = self.config, x.shape[0]
        cached, memories, pending = (None, None, 0) if state is None else (state.cached_kv, state.memories,
                                                                           state.pending)
        ys = []
        for a, b in pieces(pending, x.shape[1], c.segment_len):  # their API takes one segment piece per call
            completes = pending + b - a == c.segment_len
            out, new_cached, new_memories = self.layer(x[:, a:b], cached_kv=cached,
                                                       past_memories=memories, return_new_memories=completes)
            ys.append(out)
            cached, memories = (None, new_memories) if completes else (new_cached, memories)
            pending = 0 if completes else pending + b - a
        y = torch.cat(ys, dim=1) if ys else x.new_zeros(B, 0, c.d_model)
        return y, ThirdPartyState(cached, memories, pending, B, c, self.dtype)

    def forward(self, params, x, state=None):
        self.load(params)
        with torch.no_grad():
            y, new_state = self._stream(torch.from_numpy(np.asarray(x)).to(self.dtype), state)
        return y.numpy(), new_state

    def grad(self, params, x, dy):
        self._params = None
        self.load(params)
        self.layer.zero_grad()
        xt = torch.from_numpy(np.asarray(x)).to(self.dtype).requires_grad_(True)
        y, _ = self._stream(xt, None)
        (y * torch.from_numpy(np.asarray(dy)).to(self.dtype)).sum().backward()
        g_qkv = _grad(self.layer.to_qkv.weight).T  # (D, 3*H*d)
        n = self.config.n_heads * self.config.d_key
        return {"x": _grad(xt), "wq": g_qkv[:, :n], "wk": g_qkv[:, n:2 * n], "wv": g_qkv[:, 2 * n:],
                "wo": _grad(self.layer.to_out.weight).T, "beta": _grad(self.layer.fastweight_mem.head_gates)}


def _grad(t: torch.Tensor) -> torch.Tensor:
    """An unused tensor (beta on a first segment that ignores the gate) has no .grad: its gradient is 0."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def make(config: InfiniConfig, dtype: str = "float32") -> InfiniTransformerPytorch:
    return InfiniTransformerPytorch(config, dtype)


make.capabilities = InfiniTransformerPytorch.capabilities
make.config_pins = PINS

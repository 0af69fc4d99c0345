"""Adapter for the bundled PyTorch implementation (``infini check`` runs the suite on it).

``--impl infini_attention.conformance.adapters.torch_impl:make``. Computes in the checked
dtype (bfloat16/float16 with float32 memory, as SPEC.md §11 requires); ``grad`` is autograd.
"""
from __future__ import annotations

import numpy as np
import torch

from ...reference import InfiniConfig
from ...torch_impl import PARAM_NAMES, InfiniAttention


class TorchImpl:
    capabilities = {"delta", "gqa", "rope", "chunked", "canonical_state", "grad",
                    "float64", "float32", "bfloat16", "float16"}

    def __init__(self, config: InfiniConfig, dtype: str = "float32"):
        self.config, self.dtype = config, getattr(torch, dtype)
        self._params, self._layer = None, None

    def layer(self, params) -> InfiniAttention:
        if params is not self._params:  # the suite hands the same dict to every call of a stream
            self._params, self._layer = params, InfiniAttention.from_numpy(self.config, params, dtype=self.dtype)
        return self._layer

    def _tensor(self, a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.dtype)

    def forward(self, params, x, state=None):
        with torch.no_grad():
            y, new_state = self.layer(params)(self._tensor(x), state)
        y = y.float() if self.dtype == torch.bfloat16 else y  # NumPy has no bfloat16
        return y.numpy(), new_state  # new_state.M, new_state.z: canonical (SPEC.md §4.2)

    def grad(self, params, x, dy):
        layer = InfiniAttention.from_numpy(self.config, params, dtype=self.dtype)
        xt = self._tensor(x).requires_grad_(True)
        y, _ = layer(xt)
        (y * self._tensor(dy)).sum().backward()
        grads = {"x": xt.grad, **{n: getattr(layer, n).grad for n in PARAM_NAMES}}
        own = {"x": xt, **{n: getattr(layer, n) for n in PARAM_NAMES}}
        return {n: g if g is not None else torch.zeros_like(own[n]) for n, g in grads.items()}


def make(config: InfiniConfig, dtype: str = "float32") -> TorchImpl:
    return TorchImpl(config, dtype)


make.capabilities = TorchImpl.capabilities

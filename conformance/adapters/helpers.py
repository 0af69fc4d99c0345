"""Helpers for adapters of torch layers (README, "An adapter for a Hugging Face-style layer").

SPEC.md §3.1's parameters are ``y = x @ w`` matrices; ``torch.nn.Linear`` stores ``weight = w.T`` and may
have a bias the spec does not. :class:`TorchAdapter` does the plumbing every adapter re-did: NumPy <->
torch in the checked dtype, the layer's own parameters replaced by the suite's through
``torch.func.functional_call`` (so ``grad`` is plain autograd back to wq, wk, wv, wo, beta), zero biases,
fused qkv projections, and padding ``d_model`` up to a width the layer insists on. A subclass writes

    def build(self, config):        -> the torch module for this config
    def weights(self, p):           -> {module parameter name: tensor} from p (torch, SPEC names)
    def step(self, x, state):       -> (y, new state) for one call, using self.call(...) to run the module
"""
from __future__ import annotations

import numpy as np

from ..contract import NotSupported, require

torch = require("torch", "torch layer adapters (conformance.adapters.helpers)")


def linear(module, name: str, w) -> dict:
    """``{name.weight: w.T}`` for the ``nn.Linear`` at ``name`` (w is x @ w's (in, out)), and a zero bias if it
    has one (the spec has none)."""
    layer = module.get_submodule(name)
    if tuple(layer.weight.shape) != (w.shape[1], w.shape[0]):
        raise NotSupported(f"{name}: expected an nn.Linear of weight {(w.shape[1], w.shape[0])}, got "
                           f"{tuple(layer.weight.shape)}")
    out = {f"{name}.weight": w.T}
    if getattr(layer, "bias", None) is not None:
        out[f"{name}.bias"] = torch.zeros_like(layer.bias, dtype=w.dtype)
    return out


def fused_qkv(p: dict):
    """The (D, H*dk + 2*Hkv*d) matrix of a fused q/k/v projection ordered q, k, v (split it with ``split_qkv``)."""
    return torch.cat((p["wq"], p["wk"], p["wv"]), dim=1)


def check_zero_biases(module) -> None:
    """NotSupported if a bias of ``module`` is not zero and cannot be replaced (the spec has no biases)."""
    for name, value in module.named_parameters():
        if name.endswith("bias") and torch.any(value != 0):
            raise NotSupported(f"{name} is not zero and the adapter does not replace it (SPEC.md §3.1 has no bias)")


def pad_params(p: dict, width: int) -> dict:
    """Parameters for a layer of model width ``width`` >= D: zero rows in wq, wk, wv, zero columns in wo, so
    that on x padded with zeros the layer computes the spec's y in its first D columns."""
    D = p["wq"].shape[0]
    if width < D:
        raise NotSupported(f"d_model={D} exceeds the layer's width {width}: cannot pad down")
    pad = width - D
    out = {k: torch.nn.functional.pad(p[k], (0, 0, 0, pad)) for k in ("wq", "wk", "wv")}
    out["wo"] = torch.nn.functional.pad(p["wo"], (0, pad))
    out["beta"] = p["beta"]
    return out


class _Entry(torch.nn.Module):
    """A module whose forward is another module's ``method`` (functional_call calls ``forward``)."""

    def __init__(self, module, method: str):
        super().__init__()
        self.inner, self.method = module, method

    def forward(self, *args, **kwargs):
        return getattr(self.inner, self.method)(*args, **kwargs)


class CanonicalState:
    """A state exposing M (B, Hkv, dk, dv) and z (B, Hkv, dk) for "canonical_state", around the layer's own."""

    def __init__(self, inner, M, z):
        self.inner, self.M, self.z = inner, M, z


class TorchAdapter:
    """Base class of a torch layer's adapter; ``make = MyAdapter.factory()`` gives the ``--impl`` factory."""

    capabilities = {"float32", "float64"}
    config_pins: dict = {}

    def __init__(self, config, dtype: str = "float32"):
        self.config, self.dtype = config, getattr(torch, dtype)
        self.width = self.model_width(config)
        self.module = self.build(config).to(self.dtype).eval()
        self._params, self._weights = None, None

    # -- what a subclass writes
    def build(self, config):
        raise NotImplementedError

    def weights(self, p: dict) -> dict:
        raise NotImplementedError

    def step(self, x, state):
        raise NotImplementedError

    def model_width(self, config) -> int:
        """The width the layer needs (default d_model; e.g. n_heads * d_key for a layer that ties them)."""
        return config.d_model

    # -- the plumbing
    def call(self, *args, method: str = "forward", **kwargs):
        """Run ``module.<method>(*args, **kwargs)`` with the suite's parameters in place of its own."""
        weights = {f"inner.{k}": v for k, v in self._weights.items()}
        return torch.func.functional_call(_Entry(self.module, method), weights, args, kwargs, strict=False)

    def _tensors(self, params: dict, requires_grad: bool = False) -> dict:
        p = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.dtype).requires_grad_(requires_grad)
             for k, v in params.items()}
        return p

    def _x(self, x, requires_grad: bool = False):
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.dtype)
        if self.width > t.shape[-1]:
            t = torch.nn.functional.pad(t, (0, self.width - t.shape[-1]))
        return t.requires_grad_(requires_grad)

    def _load(self, p: dict) -> None:
        self._weights = self.weights(pad_params(p, self.width) if self.width != self.config.d_model else p)

    def _y(self, y):
        return y[..., :self.config.d_model]

    def forward(self, params, x, state=None):
        if np.shape(x)[1] == 0:  # SPEC.md §10: an empty call returns (B, 0, D) and leaves the state as it was
            return np.zeros(np.shape(x)[:2] + (self.config.d_model,), dtype=np.asarray(x).dtype), state
        with torch.no_grad():
            if params is not self._params:  # the suite hands the same dict to every call of a stream
                self._load(self._tensors(params))
                self._params = params
            y, new_state = self.step(self._x(x), state)
        y = self._y(y)
        return (y.float() if self.dtype == torch.bfloat16 else y).numpy(), new_state

    def grad(self, params, x, dy):
        p = self._tensors(params, requires_grad=True)
        self._params = None
        self._load(p)
        xt = self._x(x, requires_grad=True)
        y, _ = self.step(xt, None)
        (self._y(y) * torch.from_numpy(np.ascontiguousarray(dy)).to(self.dtype)).sum().backward()
        grads = {"x": xt.grad[..., :self.config.d_model]}
        grads.update({k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in p.items()})
        self._weights = None
        return grads

    @classmethod
    def factory(cls):
        """``make(config, dtype)`` declaring the class's capabilities and pins."""
        def make(config, dtype: str = "float32"):
            return cls(config, dtype)
        make.capabilities, make.config_pins = set(cls.capabilities), dict(cls.config_pins)
        make.__name__ = f"make_{cls.__name__}"
        return make

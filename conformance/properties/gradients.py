"""Gradients against the PyTorch implementation's float64 autograd (SPEC.md §11; training backpropagates
through the memory across segments, as the paper does)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..harness import Failure, Unsupported, handed_over, make_instance, round_to, to_numpy
from .base import prop

GRAD_NAMES = ("x", "wq", "wk", "wv", "wo", "beta")


def oracle_grads(config, params: dict, x: np.ndarray, dy: np.ndarray) -> dict:
    """d sum(y * dy) / d(x, params) of one call from a fresh state: torch_impl in float64."""
    import torch

    from ...torch_impl import InfiniAttention

    layer = InfiniAttention.from_numpy(config, params, dtype=torch.float64)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, _ = layer(xt)
    (y * torch.as_tensor(dy, dtype=torch.float64)).sum().backward()
    grads = {"x": xt.grad.numpy()}
    grads.update({n: getattr(layer, n).grad.detach().numpy() for n in GRAD_NAMES[1:]})
    return grads


@prop("gradients", "§11, §4.3", requires={"grad"}, budget=0.25)
def gradients(check):
    """SPEC.md §11, §4.3: for one call of several segments from a fresh state, the gradients of
    sum(y * dy) with respect to x and every parameter equal the PyTorch implementation's float64
    autograd (backpropagation through the memory across segments, no detach)."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=3, split="whole", max_batch=2)
    seed = check.draw(st.integers(0, 2**31 - 1), "dy_seed")
    check.edit(f"dy = np.random.default_rng({seed}).standard_normal(x.shape)")
    check.explain("grads = s.grad(params, x, dy)  # vs torch_impl float64 autograd",
                  "for name, g in s.oracle_grads(params, x, dy).items(): assert_close(grads[name], g, 'grad')")
    ns, dtype = check.ns, check.dtype
    params = {k: round_to(v, dtype) for k, v in ns["params"].items()}
    x, dy = round_to(ns["x"], dtype), round_to(ns["dy"], dtype)
    instance = make_instance(check.impl, config, dtype)
    try:
        got = instance.grad({k: handed_over(v, dtype) for k, v in params.items()}, handed_over(x, dtype),
                            handed_over(dy, dtype))
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ == "NotSupported":
            raise Unsupported(str(exc)) from None
        raise Failure(f"grad(params, x, dy) raised {type(exc).__name__}: {exc}") from None
    if not hasattr(got, "keys"):
        raise Failure(f"grad(params, x, dy): expected a dict of gradients, got {type(got).__name__}")
    want = oracle_grads(config, params, x, dy)
    missing = [n for n in GRAD_NAMES if n not in got]
    if missing:
        raise Failure(f"grad(params, x, dy): missing gradients {missing} (expected keys {list(GRAD_NAMES)})")
    for name in GRAD_NAMES:
        g, _ = to_numpy(got[name], f"grad[{name!r}]")
        if g.shape != want[name].shape:
            raise Failure(f"grad[{name!r}]: expected shape {want[name].shape}, got {g.shape}")
        check.close(f"d sum(y*dy) / d {name}", g, want[name], kind="grad",
                    hint="gradients must flow through the memory across segments (no detach of M, z) and "
                         "through both gate branches")

"""Gradients: the implementation's ``grad`` is the derivative of its own forward (SPEC.md §11; training
backpropagates through the memory across segments, as the paper does).

Compared with the implementation itself (central differences of its ``forward`` along random
directions, in float64 when it declares float64), so a mistake in the forward math, which the other
properties catch, cannot fail this one; together with ``outputs`` it means the gradients are the spec's.
``oracle_grads`` (PyTorch float64 autograd of torch_impl, needs torch) is kept for reproductions.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..contract import require
from ..harness import Failure, handed_over, make_instance, round_to, run_impl, to_numpy
from ..guard import call
from ...reference.tolerances import GRAD_TOLERANCES
from .base import prop

GRAD_NAMES = ("x", "wq", "wk", "wv", "wo", "beta")
FD = {"float64": (1e-4, 1e-6), "float32": (1e-2, 3e-3)}  # central-difference step, its relative error


def oracle_grads(config, params: dict, x: np.ndarray, dy: np.ndarray) -> dict:
    """d sum(y * dy) / d(x, params) of one call from a fresh state: torch_impl in float64 (needs torch)."""
    torch = require("torch", "the gradient oracle (torch_impl's float64 autograd)")
    from ...torch_impl import InfiniAttention

    layer = InfiniAttention.from_numpy(config, params, dtype=torch.float64)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, _ = layer(xt)
    (y * torch.as_tensor(dy, dtype=torch.float64)).sum().backward()
    grads = {"x": xt.grad.numpy()}
    grads.update({n: getattr(layer, n).grad.detach().numpy() for n in GRAD_NAMES[1:]})
    return grads


def implementation_grads(impl, config, dtype: str, params: dict, x, dy) -> dict:
    """``grad(params, x, dy)`` of a fresh instance, checked for keys and shapes; float64 arrays."""
    instance = make_instance(impl, config, dtype)
    got = call(instance.grad, {k: handed_over(v, dtype) for k, v in params.items()}, handed_over(x, dtype),
               handed_over(dy, dtype), what="grad(params, x, dy)")
    if not hasattr(got, "keys"):
        raise Failure(f"grad(params, x, dy): expected a dict of gradients, got {type(got).__name__}")
    missing = [n for n in GRAD_NAMES if n not in got]
    if missing:
        raise Failure(f"grad(params, x, dy): missing gradients {missing} (expected keys {list(GRAD_NAMES)})")
    out = {}
    for name in GRAD_NAMES:
        g, _ = to_numpy(got[name], f"grad[{name!r}]")
        want = np.shape(x) if name == "x" else np.shape(params[name])
        if g.shape != want:
            raise Failure(f"grad[{name!r}]: expected shape {want}, got {g.shape}")
        if not np.all(np.isfinite(g)):
            raise Failure(f"grad[{name!r}]: {int(np.sum(~np.isfinite(g)))} NaN/Inf entries")
        out[name] = g
    return out


def directional(impl, config, dtype: str, params: dict, x, dy, grads: dict, seed: int) -> list[tuple]:
    """For each gradient: (name, analytic <g, u>, central difference of sum(y * dy) along u, allowed error),
    u a random unit direction; the forward runs in float64 when the implementation declares it."""
    fd_dtype = "float64" if "float64" in impl.capabilities else dtype
    h, fd_rel = FD.get(fd_dtype, FD["float32"])
    rel, atol = GRAD_TOLERANCES[dtype].rtol + fd_rel, GRAD_TOLERANCES[dtype].atol
    rng = np.random.default_rng(seed)
    T = x.shape[1]

    def f(p, xx):
        return float(np.sum(run_impl(impl, config, p, xx, [T], fd_dtype).y * dy))

    rows = []
    for name in GRAD_NAMES:
        base = x if name == "x" else params[name]
        u = rng.standard_normal(base.shape)
        u /= np.linalg.norm(u) or 1.0
        step = h * max(1.0, float(np.sqrt(np.mean(base ** 2))))
        plus, minus = base + step * u, base - step * u
        if name == "x":
            fd = (f(params, plus) - f(params, minus)) / (2 * step)
        else:
            fd = (f({**params, name: plus}, x) - f({**params, name: minus}, x)) / (2 * step)
        g = grads[name]
        rows.append((name, float(np.sum(g * u)), fd, rel * (float(np.linalg.norm(g)) + abs(fd)) + atol))
    return rows


@prop("gradients", "§11, §4.3", requires={"grad"}, budget=0.25)
def gradients(check):
    """SPEC.md §11, §4.3: for one call of several segments from a fresh state, grad(params, x, dy) is the
    derivative of sum(y * dy) of the implementation's own forward, for x and every parameter (central
    differences along a random direction each): gradients flow through the memory across segments (no
    detach) and through both gate branches."""
    config = check.config()
    check.stream(config, min_segments=2, max_segments=3, split="whole", max_batch=2)
    seed = check.draw(st.integers(0, 2**31 - 1), "dy_seed")
    check.edit(f"dy = np.random.default_rng({seed}).standard_normal(x.shape)")
    check.explain(f"s.check_gradients(params, x, dy, seed={seed})  # grad vs central differences of forward")
    ns, dtype = check.ns, check.dtype
    params = {k: round_to(v, dtype) for k, v in ns["params"].items()}
    x, dy = round_to(ns["x"], dtype), round_to(ns["dy"], dtype)
    grads = implementation_grads(check.impl, config, dtype, params, x, dy)
    for name, an, fd, allowed in directional(check.impl, config, dtype, params, x, dy, grads, seed):
        score = abs(an - fd) / allowed
        if score > check.stats.worst or not check.stats.worst_what:
            check.stats.worst, check.stats.worst_what = max(score, check.stats.worst), f"d sum(y*dy) / d {name}"
        if score > 1:
            raise Failure(f"d sum(y*dy) / d {name} along a random direction: grad gives {an:.6g}, central "
                          f"differences of forward give {fd:.6g} ({score:.3g}x the allowed {allowed:.3g})\n  hint: "
                          f"grad must be the derivative of forward: gradients flow through the memory across "
                          f"segments (no detach of M, z) and through both gate branches", score)

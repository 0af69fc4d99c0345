"""Reference-layout NumPy parameter dicts <-> torch modules (float64 arrays, exact round trip)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def load_arrays(module: nn.Module, params: dict, shapes: dict, prefix: str) -> None:
    """Copy numpy arrays named like module.named_parameters() into it, checking keys/shapes/finiteness."""
    if not hasattr(params, "keys"):
        raise ValueError(f"{prefix}: expected a dict of arrays, got {type(params).__name__}")
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"{prefix}: expected keys {sorted(shapes)}, missing {missing[:8]}, "
                         f"unexpected {extra[:8]}")
    own = dict(module.named_parameters())
    with torch.no_grad():
        for name, shape in shapes.items():
            arr = np.asarray(params[name])
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{prefix}['{name}']: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
            if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
                raise ValueError(f"{prefix}['{name}']: expected finite floating values, got dtype "
                                 f"{arr.dtype} with non-finite or non-float entries")
            p = own[name]
            p.copy_(torch.as_tensor(arr.astype(np.float64)).to(device=p.device, dtype=p.dtype))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy().copy()

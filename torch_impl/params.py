"""Reference-layout NumPy parameter dicts <-> torch modules (float64 arrays, exact round trip)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from infini_attention.reference.validate import check_params

# Rounded by NumPy straight from float64: torch may round float64 -> float16 through float32 (double
# rounding), and the exporter fingerprints the weights as NumPy rounds them.
_NUMPY = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def load_arrays(module: nn.Module, config, params: dict, prefix: str = "params") -> None:
    """Copy the reference parameter dict of ``config`` (layer or LM) into ``module``'s parameters of the same names.

    Keys, shapes and finiteness are checked by the reference's one parameter check (unknown keys are errors)."""
    arrays = check_params(config, params, prefix, allow_extra=False)
    own = dict(module.named_parameters())
    with torch.no_grad():
        for name, arr in arrays.items():
            p = own[name]
            src = torch.from_numpy(arr.astype(_NUMPY[p.dtype])) if p.dtype in _NUMPY else torch.from_numpy(arr)
            p.copy_(src.to(device=p.device, dtype=p.dtype))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy().copy()

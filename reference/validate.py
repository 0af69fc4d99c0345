"""Input checks (SPEC.md §12): every error names the argument, the expected and the actual value."""
from __future__ import annotations

import numpy as np

from .config import InfiniConfig
from .state import InfiniState


def param_shapes(c: InfiniConfig) -> dict[str, tuple[int, ...]]:
    """The canonical parameter names and shapes of one layer (SPEC.md §3)."""
    return {
        "wq": (c.d_model, c.n_heads * c.d_key),
        "wk": (c.d_model, c.n_kv_heads * c.d_key),
        "wv": (c.d_model, c.n_kv_heads * c.d_value),
        "wo": (c.n_heads * c.d_value, c.d_model),
        "beta": (c.n_heads,),
    }


def as_float64(name: str, value, shape: tuple | None = None) -> np.ndarray:
    """Check a real floating array's shape and finiteness; return it as float64."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return arr


def check_params(c: InfiniConfig, params: dict, prefix: str = "params") -> dict[str, np.ndarray]:
    if not hasattr(params, "keys"):
        raise ValueError(f"{prefix}: expected a dict of arrays, got {type(params).__name__}")
    shapes = param_shapes(c)
    missing = sorted(set(shapes) - set(params))
    if missing:
        raise ValueError(f"{prefix}: expected keys {sorted(shapes)}, missing {missing}")
    return {n: as_float64(f"{prefix}['{n}']", params[n], s) for n, s in shapes.items()}


def check_x(c: InfiniConfig, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 3 or arr.shape[2] != c.d_model:
        raise ValueError(f"x: expected shape (B, T, d_model={c.d_model}), got {tuple(arr.shape)}")
    if arr.shape[0] < 1:
        raise ValueError(f"x: expected batch B >= 1, got shape {tuple(arr.shape)}")
    return as_float64("x", arr)


def check_state(c: InfiniConfig, state: InfiniState, batch: int) -> InfiniState:
    if not isinstance(state, InfiniState):
        raise ValueError(f"state: expected an InfiniState or None, got {type(state).__name__}")
    B, Hkv, dk, dv = batch, c.n_kv_heads, c.d_key, c.d_value
    n = np.shape(state.k)[2] if np.ndim(state.k) == 4 else -1
    if not 0 <= n < c.segment_len:
        raise ValueError(f"state.k: expected shape (B={B}, Hkv={Hkv}, n, dk={dk}) with 0 <= n < "
                         f"segment_len={c.segment_len}, got {np.shape(state.k)}")
    segments = state.segments
    if not isinstance(segments, (int, np.integer)) or isinstance(segments, bool) or segments < 0:
        raise ValueError(f"state.segments: expected an integer >= 0, got {segments!r}")
    return InfiniState(
        M=as_float64("state.M", state.M, (B, Hkv, dk, dv)),
        z=as_float64("state.z", state.z, (B, Hkv, dk)),
        k=as_float64("state.k", state.k, (B, Hkv, n, dk)),
        v=as_float64("state.v", state.v, (B, Hkv, n, dv)),
        segments=int(segments),
    )

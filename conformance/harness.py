"""Calling an implementation safely, and the reference it is judged against (SPEC.md §4.3, §11).

Everything an implementation can do wrong at the call level (raise, return the wrong type,
shape or dtype, NaN/Inf, a state without M and z) becomes a :class:`Failure` whose message
names the call; the suite itself never crashes on it.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass

import numpy as np

from .. import reference as R
from .contract import Implementation, NotSupported

_NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16}


class Failure(AssertionError):
    """A property does not hold; ``score`` is the error in units of the tolerance when one was measured."""

    def __init__(self, message: str, score: float = float("inf")):
        super().__init__(message)
        self.score = score


class Unsupported(Exception):
    """The implementation raised NotSupported for this example (the runner rejects it)."""


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values an array of ``dtype`` holds (SPEC.md §11: the reference sees the same inputs)."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "bfloat16":  # round-to-nearest-even on the top 16 bits of the float32 pattern
        bits = a.astype(np.float32).view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return bits.view(np.float32).astype(np.float64)
    return a.astype(_NUMPY_DTYPES[dtype]).astype(np.float64)


def handed_over(a: np.ndarray, dtype: str) -> np.ndarray:
    """The array an implementation receives: the dtype itself, float32 for bfloat16 (NumPy has none)."""
    return round_to(a, dtype).astype(_NUMPY_DTYPES.get(dtype, np.float32))


def to_numpy(value, what: str) -> tuple[np.ndarray, str]:
    """(float64 array, dtype name) from a NumPy array or anything with .detach() (torch), else Failure."""
    try:
        if hasattr(value, "detach"):
            t = value.detach().cpu()
            name = str(t.dtype).replace("torch.", "")
            return t.double().numpy(), name
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001
        raise Failure(f"{what}: expected a NumPy array, got {type(value).__name__} ({exc})") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.floating):
        raise Failure(f"{what}: expected a floating-point NumPy array, got {type(value).__name__} of dtype {arr.dtype}")
    return arr.astype(np.float64), str(arr.dtype)


@dataclass
class Run:
    """What one stream produced: y (B, T, D) float64 and, per call, the canonical (M, z) or None."""

    y: np.ndarray
    states: list


def _raised(exc: Exception, where: str) -> Failure:
    tb = traceback.extract_tb(exc.__traceback__)
    frame = tb[-1] if tb else None
    loc = f" at {frame.filename}:{frame.lineno}" if frame else ""
    return Failure(f"{where} raised {type(exc).__name__}: {exc}{loc}")


def canonical_state(state, config: R.InfiniConfig, batch: int, what: str):
    """(M, z) as float64 arrays from an implementation's state (attributes or keys), checked."""
    out = []
    for name, shape in (("M", (batch, config.n_kv_heads, config.d_key, config.d_value)),
                        ("z", (batch, config.n_kv_heads, config.d_key))):
        if hasattr(state, name):
            value = getattr(state, name)
        elif hasattr(state, "keys") and name in state:
            value = state[name]
        else:
            raise Failure(f"{what}: the state ({type(state).__name__}) exposes no {name!r}, but the implementation "
                          f"declares 'canonical_state' (SPEC.md §4.2)")
        arr, _ = to_numpy(value, f"{what}.{name}")
        if arr.shape != shape:
            raise Failure(f"{what}.{name}: expected shape {shape} (SPEC.md §4.2), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise Failure(f"{what}.{name}: {int(np.sum(~np.isfinite(arr)))} NaN/Inf entries")
        out.append(arr)
    return tuple(out)


def make_instance(impl: Implementation, config: R.InfiniConfig, dtype: str):
    try:
        return impl.make(config, dtype)
    except NotSupported as exc:
        raise Unsupported(str(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise _raised(exc, "make(config)") from None


def run_impl(impl: Implementation, config: R.InfiniConfig, params: dict, x: np.ndarray, split: list[int],
             dtype: str, want_state: bool = False, instance=None) -> Run:
    """Feed x (B, T, D) to a fresh instance (or ``instance``) in calls of ``split`` tokens."""
    inst = make_instance(impl, config, dtype) if instance is None else instance
    p_in = {k: handed_over(v, dtype) for k, v in params.items()}
    x_in = handed_over(x, dtype)
    B, D = x.shape[0], config.d_model
    ys, states, state, start = [], [], None, 0
    for i, size in enumerate(split):
        where = f"call {i + 1} of {len(split)} (tokens {start}..{start + size - 1}, T={size})"
        try:
            out = inst.forward(p_in, x_in[:, start:start + size], state)
        except NotSupported as exc:
            raise Unsupported(str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise _raised(exc, f"forward, {where},") from None
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Failure(f"forward, {where}: expected a (y, state) pair, got {type(out).__name__}")
        y, dt = to_numpy(out[0], f"y of {where}")
        if y.shape != (B, size, D):
            raise Failure(f"y of {where}: expected shape (B, T, D) = {(B, size, D)}, got {y.shape}")
        if dtype in _NUMPY_DTYPES and dt != dtype:
            raise Failure(f"y of {where}: expected dtype {dtype} (the checked dtype), got {dt}")
        if not np.all(np.isfinite(y)):
            bad = np.argwhere(~np.isfinite(y))[0]
            raise Failure(f"y of {where}: {int(np.sum(~np.isfinite(y)))} NaN/Inf entries, first at (b, t, d) = "
                          f"{tuple(int(i) for i in bad)}")
        state = out[1]
        if want_state:
            states.append(canonical_state(state, config, B, f"state after {where}"))
        ys.append(y)
        start += size
    y = np.concatenate(ys, axis=1) if ys else np.zeros((B, 0, D))
    return Run(y, states)


def run_reference(config: R.InfiniConfig, params: dict, x: np.ndarray, split: list[int], dtype: str) -> Run:
    """The spec's answer on the dtype-rounded inputs: float64 reference, same split (SPEC.md §11)."""
    p = {k: round_to(v, dtype) for k, v in params.items()}
    xr = round_to(x, dtype)
    ys, states, state, start = [], [], None, 0
    for size in split:
        y, state = R.forward(config, p, xr[:, start:start + size], state)
        ys.append(y)
        states.append((state.M, state.z))
        start += size
    return Run(np.concatenate(ys, axis=1) if ys else np.zeros((x.shape[0], 0, config.d_model)), states)

"""Calling an implementation safely, and the reference it is judged against (SPEC.md §4.3, §11).

Everything an implementation can do wrong at the call level (raise anything, hang, return the wrong
type, shape or dtype, NaN/Inf, a state without M and z) becomes a :class:`Failure` whose message
names the call; the suite itself never crashes on it (``guard.py`` runs every call). An
implementation declaring ``whole_stream`` gets the whole stream so far on every call, from
``state=None``; the suite keeps the new positions' outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import reference as R
from .contract import Implementation
from .guard import Failure, Hung, Unsupported, call

__all__ = ["Failure", "Hung", "Unsupported", "Run", "run_impl", "run_reference", "make_instance", "round_to",
           "handed_over", "to_numpy", "canonical_state"]
_NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16}


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


def canonical_state(state, config: R.InfiniConfig, batch: int, what: str, finite: bool = True):
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
        if finite and not np.all(np.isfinite(arr)):
            raise Failure(f"{what}.{name}: {int(np.sum(~np.isfinite(arr)))} NaN/Inf entries")
        out.append(arr)
    return tuple(out)


def make_instance(impl: Implementation, config: R.InfiniConfig, dtype: str):
    return call(impl.make, config, dtype, what="make(config)")


def run_impl(impl: Implementation, config: R.InfiniConfig, params: dict, x: np.ndarray, split: list[int],
             dtype: str, want_state: bool = False, instance=None, finite: bool = True) -> Run:
    """Feed x (B, T, D) to a fresh instance (or ``instance``) in calls of ``split`` tokens.

    ``finite=False`` (the diagnosis' probes) lets NaN/Inf outputs through instead of failing."""
    inst = make_instance(impl, config, dtype) if instance is None else instance
    p_in = {k: handed_over(v, dtype) for k, v in params.items()}
    B, D = x.shape[0], config.d_model
    calls, states = iter(range(len(split))), []
    x_in = handed_over(x, dtype)
    replay = "whole_stream" in impl.capabilities

    def step(chunk, state):
        i, size = next(calls), chunk.shape[1]
        start = sum(split[:i])
        where = f"call {i + 1} of {len(split)} (tokens {start}..{start + size - 1}, T={size})"
        if replay:  # no streaming API: the whole history so far, from a fresh stream; keep the new positions
            if size == 0 and start > 0:
                return np.zeros((B, 0, D)), None
            where += f", replayed as one call of tokens 0..{start + size - 1}"
            y, _ = _checked_call(inst, p_in, x_in[:, :start + size], None, where, (B, start + size, D), dtype,
                                 finite)
            return y[:, start:], None
        y, state = _checked_call(inst, p_in, chunk, state, where, (B, size, D), dtype, finite)
        if want_state:
            states.append(canonical_state(state, config, B, f"state after {where}", finite))
        return y, state

    ys, _ = R.run_split(step, x_in, split)
    return Run(np.concatenate(ys, axis=1) if ys else np.zeros((B, 0, D)), states)


def _checked_call(inst, params: dict, chunk: np.ndarray, state, where: str, shape: tuple, dtype: str,
                  finite: bool = True):
    """One ``forward`` call; anything wrong with it (raise, hang, type, shape, dtype, NaN/Inf) is a Failure."""
    out = call(inst.forward, params, chunk, state, what=f"forward, {where},")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Failure(f"forward, {where}: expected a (y, state) pair, got {type(out).__name__}")
    y, dt = to_numpy(out[0], f"y of {where}")
    if y.shape != shape:
        raise Failure(f"y of {where}: expected shape (B, T, D) = {shape}, got {y.shape}")
    if dtype in _NUMPY_DTYPES and dt != dtype:
        raise Failure(f"y of {where}: expected dtype {dtype} (the checked dtype), got {dt}")
    if finite and not np.all(np.isfinite(y)):
        bad = np.argwhere(~np.isfinite(y))[0]
        raise Failure(f"y of {where}: {int(np.sum(~np.isfinite(y)))} NaN/Inf entries, first at (b, t, d) = "
                      f"{tuple(int(i) for i in bad)}")
    return y, out[1]


def run_reference(config: R.InfiniConfig, params: dict, x: np.ndarray, split: list[int], dtype: str) -> Run:
    """The spec's answer on the dtype-rounded inputs: float64 reference, same split (SPEC.md §11)."""
    p = {k: round_to(v, dtype) for k, v in params.items()}
    states = []

    def step(chunk, state):
        y, state = R.forward(config, p, chunk, state)
        states.append((state.M, state.z))
        return y, state

    ys, _ = R.run_split(step, round_to(x, dtype), split)
    return Run(np.concatenate(ys, axis=1) if ys else np.zeros((x.shape[0], 0, config.d_model)), states)

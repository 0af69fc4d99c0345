"""Input checks for the torch layer: every error names the argument, the expected and the actual value."""

from __future__ import annotations

import torch

from infini_attention.reference import InfiniConfig, InfiniState, state_shapes
from infini_attention.reference.validate import check_pending

from .functional import memory_dtype
from .state import TorchInfiniState


def check_config(config) -> InfiniConfig:
    if not isinstance(config, InfiniConfig):
        raise ValueError(f"config: expected an InfiniConfig, got {type(config).__name__}")
    return config


FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def check_dtype(value) -> torch.dtype | None:
    """A module's parameter dtype: None (torch's default) or one of the floating dtypes the layer supports."""
    if value is not None and value not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected None or one of {', '.join(map(str, FLOAT_DTYPES))}, got {value!r}")
    return value


def check_state_dtype(value, dtype) -> torch.dtype | None:
    """None (float32, or float64 for a float64 layer) or a float dtype at least as wide as float32 (SPEC.md §11)."""
    if value is not None and value not in (torch.float32, torch.float64):
        raise ValueError(f"state_dtype: expected None, torch.float32 or torch.float64, got {value!r}")
    if value == torch.float32 and dtype == torch.float64:
        raise ValueError("state_dtype: expected None or torch.float64 for a float64 layer (the state is never "
                         "narrower than the compute dtype), got torch.float32")
    return value


def check_detach_every(value) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"detach_every: expected None or an integer >= 1, got {value!r}")
    return value


def _check_finite(name: str, t: torch.Tensor) -> None:
    # One read-only reduction: NaN/Inf always make the sum non-finite. Only then (or when
    # a sum of finite values overflows) is the exact element-wise check run.
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf entries")


def check_x(c: InfiniConfig, x, dtype: torch.dtype, check_values: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: expected a torch.Tensor of shape (B, T, d_model={c.d_model}), "
                         f"got {type(x).__name__}")
    if x.ndim != 3 or x.shape[2] != c.d_model or x.shape[0] < 1:
        raise ValueError(f"x: expected shape (B >= 1, T, d_model={c.d_model}), got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise ValueError(f"x: expected dtype {dtype} (the layer's parameter dtype), got {x.dtype}")
    if check_values:
        _check_finite("x", x)
    return x


def check_state(
    c: InfiniConfig, state, batch: int, dtype: torch.dtype, device: torch.device, check_values: bool = True,
    mdt: torch.dtype | None = None,
) -> TorchInfiniState:
    """Validate a state against the config, batch size and layer dtype.

    A reference InfiniState is accepted and converted (that is the only conversion done
    silently; a torch state of the wrong dtype is an error, not a cast)."""
    if isinstance(state, InfiniState):
        state = TorchInfiniState.from_reference(state, dtype=dtype, device=device, memory_dtype=mdt)
    if not isinstance(state, TorchInfiniState):
        raise ValueError(f"state: expected a TorchInfiniState, an InfiniState or None, "
                         f"got {type(state).__name__}")
    k = state.k
    n = check_pending("state.k", k.shape if isinstance(k, torch.Tensor) else None, c)
    shapes = state_shapes(c, batch, n)
    mdt = mdt or memory_dtype(dtype)
    # Pending keys/values still held in this layer's own decode buffer were computed by the
    # layer from validated inputs: not re-read on every decoding call (that would cost O(n)).
    own_buffer = (state._pending is not None and isinstance(state.v, torch.Tensor)
                  and state._pending.owns(state.k, state.v))
    for name, t, shape, dt in (
        ("state.M", state.M, shapes["M"], mdt),
        ("state.z", state.z, shapes["z"], mdt),
        ("state.k", state.k, shapes["k"], dtype),
        ("state.v", state.v, shapes["v"], dtype),
    ):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} (state from another config or batch?), "
                             f"got {_shape(t)}")
        if t.dtype != dt:
            raise ValueError(f"{name}: expected dtype {dt} for a {dtype} layer, got {t.dtype}")
        if check_values and not (own_buffer and name in ("state.k", "state.v")):
            _check_finite(name, t)
    seg = state.segments
    if not isinstance(seg, torch.Tensor) or seg.ndim != 0 or seg.dtype != torch.int64:
        raise ValueError(f"state.segments: expected an int64 0-d tensor, got {_describe(seg)}")
    if check_values and int(seg) < 0:
        raise ValueError(f"state.segments: expected an integer >= 0, got {int(seg)}")
    return state


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return repr(t)

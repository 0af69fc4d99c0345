"""Input checks (SPEC.md §12), one per kind of input, shared by every package: each error names the
argument, the expected and the actual value. torch_impl, export and the conformance harness call these
(tensors are read through duck typing: ``shape``, ``dtype``, ``min()``, ``max()``)."""
from __future__ import annotations

import numpy as np

from .shapes import param_shapes, state_shapes
from .state import InfiniState


def as_float64(name: str, value, shape: tuple | None = None) -> np.ndarray:
    """Check a real floating array's shape and finiteness; return it as float64."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected a float array of shape {tuple(shape)}, got {arr.dtype} {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return arr


def check_params(config, params, prefix: str = "params", allow_extra: bool = True) -> dict[str, np.ndarray]:
    """The parameters of a layer or the LM (``param_shapes``) as float64 arrays, checked key by key."""
    if not hasattr(params, "keys"):
        raise ValueError(f"{prefix}: expected a dict of arrays, got {type(params).__name__}")
    shapes = param_shapes(config)
    missing = sorted(set(shapes) - set(params))
    extra = [] if allow_extra else sorted(set(params) - set(shapes))
    if missing or extra:
        keys = sorted(shapes) if len(shapes) <= 8 else f"{len(shapes)} keys such as {sorted(shapes)[:4]}"
        raise ValueError(f"{prefix}: expected keys {keys}, missing {missing[:8]}, unexpected {extra[:8]}")
    return {n: as_float64(f"{prefix}['{n}']", params[n], s) for n, s in shapes.items()}


def is_integer_dtype(dtype) -> bool:
    """True for NumPy and torch integer dtypes (not bool): read by name, so torch is not imported."""
    try:
        return bool(np.issubdtype(np.dtype(str(dtype).replace("torch.", "")), np.integer))
    except TypeError:
        return False


def check_token_ids(vocab_size: int, tokens, name: str = "tokens", batch: int | None = None):
    """Token ids (B, T) of an integer dtype in [0, vocab_size) (SPEC.md §9, §12); NumPy array or tensor."""
    shape = tuple(getattr(tokens, "shape", ()))
    dtype = getattr(tokens, "dtype", type(tokens).__name__)
    if len(shape) != 2 or not is_integer_dtype(dtype):
        what = "tensor" if str(dtype).startswith("torch.") else "array"
        rows = "B" if batch is None else f"batch={batch}"
        raise ValueError(f"{name}: expected an integer {what} of shape ({rows}, T), got {dtype} {shape}")
    if batch is not None and shape[0] != batch:
        raise ValueError(f"{name}: expected batch {batch} (the stream's; reset(batch=...) starts a stream with "
                         f"another), got {shape[0]} in shape {shape}")
    if shape[0] * shape[1]:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            r, t = (int(i) for i in np.argwhere(np.asarray(_host(tokens)) == bad)[0])
            raise ValueError(f"{name}: expected token ids in [0, {vocab_size}) (vocab_size), got {bad} at (row {r}, "
                             f"position {t}); range [{lo}, {hi}]")
    return tokens


def _host(t):
    """A NumPy view of a NumPy array or a (CPU or device) tensor, only for error messages."""
    return t.detach().cpu().numpy() if hasattr(t, "detach") else t


def check_pending(name: str, shape, attn) -> int:
    """The pending length n of a state's keys (B, Hkv, n, dk): 0 <= n < segment_len (SPEC.md §4.2)."""
    shape = tuple(shape) if shape is not None else ()
    n = shape[2] if len(shape) == 4 else -1
    if not 0 <= n < attn.segment_len:
        raise ValueError(f"{name}: expected shape (B, Hkv={attn.n_kv_heads}, n, dk={attn.d_key}) with 0 <= n < "
                         f"segment_len={attn.segment_len}, got {shape}")
    return n


def check_segments(name: str, value) -> int:
    """The completed-segment counter (SPEC.md §4.2): an integer >= 0."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def check_x(c, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 3 or arr.shape[2] != c.d_model:
        raise ValueError(f"x: expected shape (B, T, d_model={c.d_model}), got {tuple(arr.shape)}")
    if arr.shape[0] < 1:
        raise ValueError(f"x: expected batch B >= 1, got shape {tuple(arr.shape)}")
    return as_float64("x", arr)


def check_state(c, state: InfiniState, batch: int) -> InfiniState:
    if not isinstance(state, InfiniState):
        raise ValueError(f"state: expected an InfiniState or None, got {type(state).__name__}")
    n = check_pending("state.k", np.shape(state.k) if np.ndim(state.k) == 4 else None, c)
    shapes = state_shapes(c, batch, n)
    return InfiniState(*(as_float64(f"state.{f}", getattr(state, f), shapes[f]) for f in ("M", "z", "k", "v")),
                       segments=check_segments("state.segments", state.segments))

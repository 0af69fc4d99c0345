"""Checks done before ONNX Runtime runs: every error names what was expected and what came.

A model file is checked against its own metadata (the config implies every graph input and
output, io_spec.py); a chunk against the model and the stream's batch; a state against the
model's shapes and dtypes; a state file against the model that saved it (model_id).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..reference import io_spec
from ..reference.validate import check_pending, check_token_ids
from ..reference.io_spec import FORMAT, METADATA_KEYS

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def concrete(dims: tuple, batch: int, past_len: int) -> tuple:
    """A state spec's dims with ``batch`` and ``past_len`` filled in."""
    return tuple({"batch": batch, "past_len": past_len}.get(d, d) if isinstance(d, str) else d for d in dims)


def model_metadata(sess, path) -> dict:
    """Config, kind, dtype and model_id from the file's metadata; the graph's I/O must match them."""
    meta = sess.get_modelmeta().custom_metadata_map
    got = meta.get(METADATA_KEYS["format"])
    if got != FORMAT:
        raise ValueError(f"model {str(path)!r}: expected an Infini-attention export (metadata "
                         f"{METADATA_KEYS['format']!r} = {FORMAT!r}), got {got!r}")
    config = io_spec.config_from_json(meta[METADATA_KEYS["config"]])
    out = {"config": config, "kind": meta[METADATA_KEYS["kind"]], "model_id": meta[METADATA_KEYS["model_id"]],
           "compute_dtype": meta[METADATA_KEYS["compute_dtype"]]}
    if out["kind"] != io_spec.kind_of(config):
        raise ValueError(f"model {str(path)!r}: metadata kind {out['kind']!r} does not match its config "
                         f"({type(config).__name__})")
    expected = [(s.name, list(s.dims), s.dtype) for s in io_spec.specs(config, out["compute_dtype"])]
    actual = [(a.name, [d if isinstance(d, int) else str(d) for d in a.shape], _ORT_DTYPES.get(a.type, a.type))
              for a in list(sess.get_inputs()) + list(sess.get_outputs())]
    if expected != actual:
        diff = next((e, a) for e, a in zip(expected + [None] * len(actual), actual + [None] * len(expected))
                    if e != a)
        raise ValueError(f"model {str(path)!r}: graph I/O does not match its metadata config: expected "
                         f"{diff[0]}, got {diff[1]}")
    return out


def check_chunk(sess, chunk) -> np.ndarray:
    """LM: int64 ids (B, T) in [0, vocab); layer: x (B, T, D) in the compute dtype."""
    B = sess.batch
    arr = np.asarray(chunk)
    if sess.kind == "lm":
        if arr.ndim == 1 and B == 1:
            arr = arr[None]
        check_token_ids(sess.config.vocab_size, arr, "input_ids", batch=B)
        return arr.astype(np.int64, copy=False)
    D = sess.attn.d_model
    if arr.ndim != 3 or arr.shape[2] != D or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"x: expected a float array of shape (batch={B}, T, d_model={D}), got {arr.dtype} "
                         f"{tuple(arr.shape)}")
    _check_batch("x", arr, B)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"x: expected finite values, got {int(np.size(arr) - np.isfinite(arr).sum())} NaN/Inf")
    return arr.astype(sess.compute_dtype, copy=False)


def _check_batch(name: str, arr: np.ndarray, B: int) -> None:
    if arr.shape[0] != B:
        raise ValueError(f"{name}: expected batch {B} (the stream's; reset(batch=...) starts a stream with "
                         f"another), got {arr.shape[0]} in shape {tuple(arr.shape)}")


def check_state_arrays(sess, arrays) -> None:
    """Names, shapes, dtypes and values of a state for this model (a state of another model fails here)."""
    if not hasattr(arrays, "keys"):
        raise ValueError(f"state: expected a dict of arrays keyed by input name, got {type(arrays).__name__}")
    names = [s.name for s in sess.state_specs]
    missing, extra = [n for n in names if n not in arrays], sorted(set(arrays) - set(names))
    if missing or extra:
        raise ValueError(f"state: expected the {len(names)} arrays {names[:5]}{' ...' if len(names) > 5 else ''} "
                         f"of this {sess.kind} model; missing {missing[:4]}, unexpected {extra[:4]} "
                         "(a state from another model?)")
    seg = np.asarray(arrays["past_segments"])
    if seg.shape != () or seg.dtype != np.int64 or int(seg) < 0:
        raise ValueError(f"state 'past_segments': expected an int64 scalar >= 0 (shape ()), got {seg.dtype} "
                         f"{tuple(seg.shape)} {seg.tolist() if seg.size < 4 else ''}")
    k0 = np.asarray(arrays[sess._key0])
    n = check_pending(f"state {sess._key0!r}", k0.shape, sess.attn)
    B = k0.shape[0]
    a = sess.attn
    for spec in sess.state_specs[1:]:
        arr = np.asarray(arrays[spec.name])
        want = concrete(spec.dims, B, n)
        if arr.shape != want or arr.dtype != np.dtype(spec.dtype):
            raise ValueError(f"state {spec.name!r}: expected {spec.dtype} {want} for this model (batch={B}, "
                             f"pending n={n}, n_kv_heads={a.n_kv_heads}, d_key={a.d_key}, d_value={a.d_value}), "
                             f"got {arr.dtype} {tuple(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"state {spec.name!r}: expected finite values, got NaN/Inf")


def read_state_file(sess, path) -> tuple[dict, dict]:
    """(arrays, meta) of a file written by `InfiniSession.save_state`, checked to come from this model."""
    from .session import STATE_FILE_FORMAT

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file: expected a file written by save_state, got {str(path)!r}")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if "__meta__" not in arrays:
        raise ValueError(f"state file {str(path)!r}: expected a '__meta__' entry (format {STATE_FILE_FORMAT}), "
                         "found none")
    meta = json.loads(str(arrays.pop("__meta__")))
    if meta.get("format") != STATE_FILE_FORMAT:
        raise ValueError(f"state file {str(path)!r}: expected format {STATE_FILE_FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("config") != sess.config.to_dict():
        ours, theirs = sess.config.to_dict(), meta.get("config") or {}
        diff = _config_diff(ours, theirs)
        raise ValueError(f"state file {str(path)!r}: saved from another model (config differs: {diff}); "
                         f"expected a state of model {sess.model_id}")
    if meta.get("model_id") != sess.model_id:
        raise ValueError(f"state file {str(path)!r}: saved from another model with the same config (model_id "
                         f"{meta.get('model_id')}), expected model_id {sess.model_id} (the weights differ)")
    return arrays, meta


def _config_diff(ours: dict, theirs: dict, prefix: str = "") -> str:
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _config_diff(a, b, f"{prefix}{key}.")
            out += [sub] if sub else []
        elif a != b:
            out.append(f"{prefix}{key} {b!r} != {a!r}")
    return ", ".join(out[:4])

"""Checks done before ONNX Runtime runs: every error names what was expected and what came.

A model file is checked against its own metadata (the config implies every graph input and
output, io_spec.py); a chunk against the model and the stream's batch; a state against the
model's shapes and dtypes; a state file against the model that saved it (model_id).
"""
from __future__ import annotations

import functools
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..reference import io_spec
from ..reference.validate import check_pending, check_token_ids
from ..reference.io_spec import FORMAT, METADATA_KEYS, OLD_FORMATS

_INT_DTYPES = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                                np.uint64))
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(double)": "float64"}


@functools.lru_cache(maxsize=None)
def runtime_opset() -> int:
    """The newest ai.onnx opset this onnxruntime loads: probed with a one-node model per opset, newest first
    (what ONNX Runtime actually accepts, not a table of releases)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    so = ort.SessionOptions()
    so.log_severity_level = 4
    for version in range(onnx.defs.onnx_opset_version(), 16, -1):
        graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "probe",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        model.ir_version = 10
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return version
        except Exception:  # noqa: BLE001 - refused: try the opset below
            continue
    return 16


def check_model_file(path) -> None:
    """Before ONNX Runtime parses the graph: the file's format is the one this version runs (an older
    export says to re-export) and its opset one this onnxruntime runs. Only the header is read."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX at all: ONNX Runtime's own load error says so (stream.py)
        return
    meta = {p.key: p.value for p in model.metadata_props}
    got = meta.get(METADATA_KEYS["format"])
    if got in OLD_FORMATS:
        raise ValueError(f"model {str(path)!r}: expected format {FORMAT!r}, got {got!r} (an older export: "
                         f"{OLD_FORMATS[got]})")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if got == FORMAT and opset > runtime_opset():
        import onnxruntime as ort

        raise ValueError(f"model {str(path)!r}: opset: expected at most {runtime_opset()} (the newest this "
                         f"onnxruntime {ort.__version__} runs), got {opset}; re-export with --opset 17 or upgrade "
                         "onnxruntime")


def load_session(path, options, providers):
    """ort.InferenceSession; a graph this runtime cannot load names its opset in the error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001
        if "opset" in str(exc).lower() and type(exc).__module__.startswith("onnxruntime"):
            raise ValueError(f"model {str(path)!r}: opset: expected one this onnxruntime {ort.__version__} runs, "
                             f"ONNX Runtime refused the file ({(str(exc).splitlines() or [''])[0][:200]}); "
                             "re-export with --opset 17") from None
        raise


def concrete(dims: tuple, batch: int, past_len: int) -> tuple:
    """A state spec's dims with ``batch`` and ``past_len`` filled in."""
    return tuple({"batch": batch, "past_len": past_len}.get(d, d) if isinstance(d, str) else d for d in dims)


def model_metadata(sess, path) -> dict:
    """Config, kind, dtype and model_id from the file's metadata; the graph's I/O must match them."""
    meta = sess.get_modelmeta().custom_metadata_map
    got = meta.get(METADATA_KEYS["format"])
    if got in OLD_FORMATS:
        raise ValueError(f"model {str(path)!r}: expected format {FORMAT!r}, got {got!r} (an older export: "
                         f"{OLD_FORMATS[got]})")
    if got != FORMAT:
        raise ValueError(f"model {str(path)!r}: expected an Infini-attention export (metadata "
                         f"{METADATA_KEYS['format']!r} = {FORMAT!r}), got {got!r}")
    config = io_spec.config_from_json(meta[METADATA_KEYS["config"]])
    out = {"config": config, "kind": meta[METADATA_KEYS["kind"]], "model_id": meta[METADATA_KEYS["model_id"]],
           "compute_dtype": meta[METADATA_KEYS["compute_dtype"]],
           "state_dtype": meta.get(METADATA_KEYS["state_dtype"], "float32")}
    if out["kind"] != io_spec.kind_of(config):
        raise ValueError(f"model {str(path)!r}: metadata kind {out['kind']!r} does not match its config "
                         f"({type(config).__name__})")
    for key, allowed in (("compute_dtype", io_spec.COMPUTE_DTYPES), ("state_dtype", io_spec.STATE_DTYPES)):
        if out[key] not in allowed:
            raise ValueError(f"model {str(path)!r}: metadata {METADATA_KEYS[key]!r}: expected one of "
                             f"{list(allowed)}, got {out[key]!r}")
    expected = [(s.name, list(s.dims), s.dtype)
                for s in io_spec.specs(config, out["compute_dtype"], out["state_dtype"])]
    actual = [(a.name, [d if isinstance(d, int) else str(d) for d in a.shape], _ORT_DTYPES.get(a.type, a.type))
              for a in list(sess.get_inputs()) + list(sess.get_outputs())]
    if config.segment_len == 1:  # present_len = (past_len + chunk) mod 1 is 0 for every call: ORT may say so
        actual = [(name, ["present_len" if d == 0 and "present_len" in want[1] and i == 2 else d
                          for i, d in enumerate(dims)], dtype)
                  for (name, dims, dtype), want in zip(actual, expected + [("", [], "")] * len(actual))]
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
    if sess.config.takes_tokens:
        if arr.ndim == 1 and B == 1:
            arr = arr[None]
        # The common case in a few NumPy calls (a decoding loop pays for every one); anything else, and every
        # failure, goes through check_token_ids, whose conditions these are and which names what is wrong.
        vocab = sess.config.input_width
        fine = (arr.dtype in _INT_DTYPES and arr.ndim == 2 and arr.shape[0] == B
                and (arr.size == 0 or (arr.min() >= 0 and arr.max() < vocab)))
        if not fine:
            check_token_ids(vocab, arr, "input_ids", batch=B)
        return arr.astype(np.int64, copy=False)
    D = sess.config.input_width
    width = "d_model" if sess.kind == "layer" else "d_input"
    if arr.ndim != 3 or arr.shape[2] != D or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"x: expected a float array of shape (batch={B}, T, {width}={D}), got {arr.dtype} "
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
    for spec in sess.state_specs[1:]:
        arr = np.asarray(arrays[spec.name])
        want = concrete(spec.dims, B, n)
        a = sess.config.layer_configs[spec.layer]
        if arr.shape != want or arr.dtype != np.dtype(spec.dtype):
            raise ValueError(f"state {spec.name!r}: expected {spec.dtype} {want} for this model (batch={B}, "
                             f"pending n={n}, n_kv_heads={a.n_kv_heads}, d_key={a.d_key}, d_value={a.d_value}), "
                             f"got {arr.dtype} {tuple(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"state {spec.name!r}: expected finite values, got NaN/Inf")


def read_state_file(sess, path) -> tuple[dict, dict]:
    """(arrays, meta) of a file written by `InfiniSession.save_state`: readable, of a known format, from
    this model (config and model_id), of its shapes and dtypes, and consistent (`check_state_consistency`).
    Every failure is a ValueError (FileNotFoundError when missing) naming the file and the field."""
    from .session import STATE_FILE_FORMAT

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"state file: expected a file written by save_state, got the directory {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"state file: expected a file written by save_state, got {str(path)!r}")
    name = f"state file {str(path)!r}"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"a single {type(data).__name__}, not an .npz archive")
        with data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("__meta__"))) if "__meta__" in arrays else None
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError, KeyError) as exc:
        raise ValueError(f"{name}: expected an .npz archive written by save_state, cannot read it "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if meta is None:
        raise ValueError(f"{name}: expected a '__meta__' entry (format {STATE_FILE_FORMAT}), found none")
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: expected '__meta__' to be a JSON object, got {type(meta).__name__}")
    known = (STATE_FILE_FORMAT,)  # the state file formats this version reads
    if meta.get("format") not in known:
        raise ValueError(f"{name}: expected format {STATE_FILE_FORMAT!r} (the formats this version reads: "
                         f"{list(known)}), got {meta.get('format')!r}")
    if meta.get("config") != sess.config.to_dict():
        ours, theirs = sess.config.to_dict(), meta.get("config") or {}
        diff = _config_diff(ours, theirs) if isinstance(theirs, dict) else repr(theirs)
        raise ValueError(f"{name}: saved from another model (config differs: {diff}); "
                         f"expected a state of model {sess.model_id}")
    if meta.get("model_id") != sess.model_id:
        raise ValueError(f"{name}: saved from another model with the same config (model_id "
                         f"{meta.get('model_id')}), expected model_id {sess.model_id} (the weights differ)")
    try:
        check_state_arrays(sess, arrays)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    check_state_consistency(sess, arrays, meta, name)
    return arrays, meta


def check_state_consistency(sess, arrays: dict, meta: dict, name: str = "state") -> None:
    """A state (already of the model's shapes) agrees with itself (SPEC.md §4.2, §7): ``position`` =
    past_segments * N + pending (dim 2 of ``past_key_values.0.key``), ``batch`` = its rows, z >= 0 (a sum
    of sigma(k) = elu(k) + 1 > 0), and M = z = 0 while no segment has been written. The error names the field."""
    N = sess.segment_len
    segments = int(np.asarray(arrays["past_segments"]))
    rows, _, pending, _ = np.shape(arrays[sess._key0])
    want = segments * N + pending
    pos = meta.get("position")
    if isinstance(pos, bool) or not isinstance(pos, int) or pos != want:
        raise ValueError(f"{name}: field 'position': expected {want} (past_segments {segments} x segment_len {N} + "
                         f"{pending} pending tokens), got {pos!r}")
    if meta.get("batch", rows) != rows:
        raise ValueError(f"{name}: field 'batch': expected {rows} (the rows of its arrays), got {meta['batch']!r}")
    for spec in sess.state_specs[1:]:
        arr = np.asarray(arrays[spec.name])
        if spec.name.endswith(".z") and arr.size and float(arr.min()) < 0:
            raise ValueError(f"{name}: field {spec.name!r}: expected values >= 0 (z sums sigma(k) = elu(k) + 1 > 0), "
                             f"got min {float(arr.min()):.6g}")
        if segments == 0 and spec.name.startswith("past_memory.") and np.any(arr):
            raise ValueError(f"{name}: field {spec.name!r}: expected zeros while past_segments is 0 (no segment "
                             f"written yet), got max |value| {float(np.abs(arr).max()):.6g}")


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

"""Export a layer or the LM to ONNX, then check the file before it is put in place.

`export()` traces `graph.LayerStep` / `graph.LMStep` with the TorchScript exporter
(``dynamo=False``: size arithmetic becomes Shape ops, so batch, chunk and past_len stay
symbolic), writes the config into the metadata, and then checks:
  1. onnx.checker;
  2. every input and output against io_spec.py: names, dtypes, and the dims that must be
     symbolic really are (an exporter can silently make a dynamic dim static);
  3. ONNX Runtime (CPU) against the float64 reference on random inputs streamed over many
     calls (selfcheck.py: the splits, and how trained weights' conditioning is allowed for).
The file appears at ``path`` only when all pass; otherwise `ExportError` says what failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from ..reference import SPEC_VERSION, LMConfig, lm_param_shapes, param_shapes
from ..reference import io_spec
from .graph import LayerStep, LMStep
from .selfcheck import SelfCheckError, self_check

DTYPES = {"float32": torch.float32, "float16": torch.float16}
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The export or its self-check failed; no file was written at the requested path."""


@dataclass
class ExportResult:
    path: Path
    kind: str
    config: object
    dtype: str
    model_id: str
    checks: list[str] = field(default_factory=list)  # one line per comparison made
    seconds: float = 0.0


def export(config, params: dict, path, *, dtype: str = "float32", opset: int = DEFAULT_OPSET, check: bool = True,
           seed: int = 0) -> ExportResult:
    """Export ``config`` (LMConfig -> the LM, InfiniConfig -> one layer) with reference-layout ``params``."""
    t0 = time.perf_counter()
    kind = io_spec.kind_of(config)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    params = _check_params(config, params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    module = (LMStep if kind == "lm" else LayerStep)(config, params, DTYPES[dtype]).eval()
    specs = io_spec.specs(config, dtype)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, _example_inputs(config, dtype), str(tmp),
                              input_names=[s.name for s in specs if s.direction == "in"],
                              output_names=[s.name for s in specs if s.direction == "out"],
                              dynamic_axes=io_spec.dynamic_axes(config, dtype), opset_version=opset,
                              dynamo=False, do_constant_folding=False)  # keep weights under their names
        model = onnx.load(str(tmp))
        model_id = fingerprint(config, params, dtype)
        meta = {"format": io_spec.FORMAT, "kind": kind, "config": json.dumps(config.to_dict(), sort_keys=True),
                "compute_dtype": dtype, "state_dtype": "float32", "model_id": model_id,
                "spec_version": SPEC_VERSION, "contract": io_spec.CONTRACT,
                "aliases": json.dumps(_aliases(model, params, dtype))}
        onnx.helper.set_model_props(model, {io_spec.METADATA_KEYS[k]: v for k, v in meta.items()})
        model.doc_string = f"Infini-attention {kind} (arXiv 2404.07143); {io_spec.CONTRACT}"
        onnx.checker.check_model(model)
        problems = check_io(model, config, dtype)
        if problems:
            raise ExportError("exported graph I/O does not match io_spec.py:\n  " + "\n  ".join(problems))
        onnx.save(model, str(tmp))
        result = ExportResult(path, kind, config, dtype, model_id)
        if check:
            try:
                result.checks = self_check(tmp, config, rounded_params(params, dtype), dtype=dtype, seed=seed)
            except SelfCheckError as exc:
                raise ExportError(str(exc)) from None
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    result.seconds = time.perf_counter() - t0
    return result


def check_io(model: onnx.ModelProto, config, dtype: str = "float32") -> list[str]:
    """Differences between the graph's inputs/outputs and io_spec.py (empty when they agree)."""
    elem = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "int64": onnx.TensorProto.INT64}
    graph = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    order = [v.name for v in model.graph.input] + [v.name for v in model.graph.output]
    specs = io_spec.specs(config, dtype)
    problems = [] if order == [s.name for s in specs] else [f"names/order: expected {[s.name for s in specs]}, "
                                                            f"got {order}"]
    for s in specs:
        if s.name not in graph:
            continue
        t = graph[s.name].type.tensor_type
        if t.elem_type != elem[s.dtype]:
            problems.append(f"{s.name}: expected dtype {s.dtype}, got {onnx.TensorProto.DataType.Name(t.elem_type)}")
        dims = list(t.shape.dim)
        if len(dims) != len(s.dims):
            problems.append(f"{s.name}: expected rank {len(s.dims)} {s.dims}, got rank {len(dims)}")
            continue
        for axis, (want, got) in enumerate(zip(s.dims, dims)):
            if isinstance(want, str) and (got.HasField("dim_value") or got.dim_param != want):
                what = f"static {got.dim_value}" if got.HasField("dim_value") else repr(got.dim_param)
                problems.append(f"{s.name} dim {axis}: expected symbolic {want!r}, got {what} "
                                "(the exporter specialised a dynamic dim)")
            elif not isinstance(want, str) and (not got.HasField("dim_value") or got.dim_value != want):
                problems.append(f"{s.name} dim {axis}: expected {want}, got {got.dim_param or got.dim_value}")
    return problems


def _aliases(model: onnx.ModelProto, params: dict, dtype: str) -> dict:
    """{parameter: initializer} for parameters the exporter merged into an identical initializer
    (e.g. norm weights that are all ones), so `checkpoint.params_from_onnx` can name every weight."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for name, arr in rounded_params(params, dtype, as_float64=False).items():
        if name not in inits:
            out[name] = next((n for n, t in inits.items() if t.dims == list(arr.shape)
                              and np.array_equal(onnx.numpy_helper.to_array(t), arr)), None)
    return out


def fingerprint(config, params: dict, dtype: str) -> str:
    """16 hex digits of sha256 over the config, the dtype and the weights as exported."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode() + dtype.encode())
    for name, arr in sorted(rounded_params(params, dtype, as_float64=False).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def rounded_params(params: dict, dtype: str, as_float64: bool = True) -> dict:
    """Parameters as the graph holds them (beta in float32, the rest in the compute dtype)."""
    out = {n: np.asarray(a, np.float64).astype(np.float32 if n.endswith("beta") else dtype) for n, a in params.items()}
    return {n: a.astype(np.float64) for n, a in out.items()} if as_float64 else out


def _check_params(config, params: dict) -> dict:
    shapes = lm_param_shapes(config) if isinstance(config, LMConfig) else param_shapes(config)
    if not hasattr(params, "keys"):
        raise ValueError(f"params: expected a dict of arrays, got {type(params).__name__}")
    missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"params: expected the {len(shapes)} keys of {type(config).__name__}, missing "
                         f"{missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for name, shape in shapes.items():
        arr = np.asarray(params[name])
        if tuple(arr.shape) != tuple(shape) or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"params['{name}']: expected a float array of shape {shape}, got {arr.dtype} "
                             f"{tuple(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"params['{name}']: expected finite values, got NaN/Inf")
        out[name] = arr.astype(np.float64)
    return out


def _example_inputs(config, dtype: str) -> tuple:
    """Inputs to trace with: batch 2, n = 1 pending, t = up to 3 new tokens (n + t <= N)."""
    B = 2
    attn = config.attn if isinstance(config, LMConfig) else config
    N = attn.segment_len
    n = 1 if N >= 2 else 0
    t = min(3, N - n)
    g = torch.Generator().manual_seed(0)
    if isinstance(config, LMConfig):
        first = torch.randint(0, config.vocab_size, (B, t), generator=g)
    else:
        first = torch.randn(B, t, attn.d_model, generator=g).to(DTYPES[dtype])
    state = [torch.tensor(0, dtype=torch.int64)]
    for spec in io_spec.inputs(config, dtype):
        if spec.layer is not None:
            shape = tuple({"batch": B, "past_len": n}.get(d, d) if isinstance(d, str) else d for d in spec.dims)
            state.append(torch.rand(shape, generator=g))
    return (first, *state)


"""Export a layer, the LM or any model of the streaming protocol to ONNX, then check the file before it is put
in place.

`export()` takes the spec's configs and reference weights; `export_model()` any torch model that follows
``torch_impl/protocol.py`` (the spec's models included, which it hands to `export`). Both end in one path:
`export()` traces `graph.GraphStep` once per torch_impl form (``inside``: a call inside one segment, the
decoding form; ``piece``: a call ending on a segment boundary; ``chunk``: longer calls), with torch.export
(``exporter="dynamo"``, default) or the TorchScript tracer (``"torchscript"``, opset <= 20), joins them under
one ``If`` (compose.py), writes the config into the metadata, and then checks:
  1. onnx.checker;
  2. every input and output against io_spec.py: names, dtypes, and the dims that must be
     symbolic really are (an exporter can silently make a dynamic dim static);
  3. ONNX Runtime (CPU) against the float64 reference on random inputs streamed over many
     calls (selfcheck.py: the splits, and how trained weights' conditioning is allowed for); for a model
     that is not the spec's, the reference is its own forward in float64.
The file appears at ``path`` only when all pass; otherwise `ExportError` says what failed, naming the exporter.
Opset 23 (default) computes local attention with the standard ``Attention`` op; ``opset=17`` keeps
MatMul/Softmax for older runtimes. Same inputs, outputs and results either way.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from ..reference import SPEC_VERSION, io_spec
from ..reference.shapes import attn_prefix
from ..reference.validate import check_params
from ..torch_impl import attention_layers, model_config, model_from_numpy
from ..torch_impl.protocol import is_spec_config
from .compose import compose, node_counts
from .graph import ATTENTION_OPSET, EXPORTERS, FORMS, TORCHSCRIPT_MAX_OPSET, GraphStep, trace
from .io_check import check_io
from .selfcheck import ModuleReference, SelfCheckError, SpecReference, self_check

DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
DEFAULT_OPSET = ATTENTION_OPSET
MIN_OPSET = 17  # Shape(start, end), LessOrEqual, CumSum: all there by 17; the MatMul form is tested at 17


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
    exporter: str = "dynamo"
    opset: int = DEFAULT_OPSET  # as written: the dynamo exporter writes at least DYNAMO_MIN_OPSET
    state_dtype: str = "float32"
    nodes: dict = field(default_factory=dict)  # compose.node_counts: per branch and in all


def export(config, params: dict, path, *, dtype: str = "float32", opset: int = DEFAULT_OPSET, check: bool = True,
           seed: int = 0, exporter: str = "dynamo", state_dtype: str = "float32") -> ExportResult:
    """Export ``config`` (LMConfig -> the LM, InfiniConfig -> one layer) with reference-layout ``params``.

    dtype: compute dtype ("float32", "float16"); state_dtype: M and z ("float32", or "float64" for streams far
    past 1e9 tokens, SPEC.md §11); exporter: "dynamo" or "torchscript"; opset: 17 .. (23+: Attention op)."""
    if io_spec.kind_of(config) == "model":
        raise ValueError("config: expected an LMConfig or an InfiniConfig (a ModelConfig describes a model's graph, "
                         "not how it computes: export the model itself with export_model(model, path))")
    check_options(dtype, state_dtype, exporter, opset)
    params = check_params(config, params, allow_extra=False)
    reference = SpecReference(config, rounded_params(params, dtype), dtype)
    return _export(config, params, lambda: traced_module(config, params, dtype, state_dtype), reference, path,
                   dtype=dtype, opset=opset, check=check, seed=seed, exporter=exporter, state_dtype=state_dtype,
                   cache=True)


def export_model(model, path, *, name: str = "", dtype: str = "float32", opset: int = DEFAULT_OPSET,
                 check: bool = True, seed: int = 0, exporter: str = "dynamo", state_dtype: str = "float32"
                 ) -> ExportResult:
    """Export any torch model of the streaming protocol (``torch_impl/protocol.py``: forward(inputs, states) ->
    (outputs, states), one state per InfiniAttention in module order) by tracing its own forward.

    The spec's models (InfiniTransformerLM, InfiniAttention) go through `export` with their weights, so the float64
    reference checks them; for any other model the self-check's reference is the model's own forward, in float64,
    over the same streams. ``name``: recorded in the file's config (e.g. ``pkg.models:build``). Options as `export`."""
    check_options(dtype, state_dtype, exporter, opset)
    config = model_config(model, name)  # the protocol, checked on a real call
    if is_spec_config(config):
        return export(config, model.numpy_params(), path, dtype=dtype, opset=opset, check=check, seed=seed,
                      exporter=exporter, state_dtype=state_dtype)
    prepared = prepared_module(model, dtype, state_dtype)
    params = {n: p.detach().cpu().numpy() for n, p in prepared.named_parameters()}
    step = GraphStep(prepared, torch.float32 if config.takes_tokens else DTYPES[dtype])  # io_spec: logits float32
    return _export(config, params, lambda: step, ModuleReference(model, dtype, state_dtype), path, dtype=dtype,
                   opset=opset, check=check, seed=seed, exporter=exporter, state_dtype=state_dtype, cache=False)


def _export(config, params: dict, build, reference, path, *, dtype, opset, check, seed, exporter, state_dtype,
            cache: bool) -> ExportResult:
    """Trace ``build()`` (a GraphStep) once per form, compose, check, self-check against ``reference``, and only
    then put the file at ``path``. ``params``: name -> array as the graph holds them (initializer names)."""
    t0 = time.perf_counter()
    kind = config.kind
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        graphs = {}
        for branch in FORMS:
            form = traced_form(branch, config.segment_len)
            try:
                graphs[branch] = traced(config, params, build, dtype, state_dtype, form, exporter, opset, cache)
            except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as the export's
                raise ExportError(f"exporter {exporter!r} (opset {opset}) could not export the {kind}'s {form} form: "
                                  f"{_cause(exc)}"
                                  + ("; try --exporter torchscript --opset 17" if exporter == "dynamo" else
                                     "; try --exporter dynamo")) from exc
        model = compose(graphs, config, dtype, state_dtype, set(params))
        model_id = fingerprint(config, params, dtype, state_dtype)
        meta = {"format": io_spec.FORMAT, "kind": kind, "config": json.dumps(config.to_dict(), sort_keys=True),
                "compute_dtype": dtype, "state_dtype": state_dtype, "model_id": model_id,
                "spec_version": SPEC_VERSION, "contract": io_spec.CONTRACT, "exporter": exporter,
                "aliases": json.dumps(_aliases(model, params, dtype))}
        onnx.helper.set_model_props(model, {io_spec.METADATA_KEYS[k]: v for k, v in meta.items()})
        model.doc_string = f"Infini-attention {kind} (arXiv 2404.07143); {io_spec.CONTRACT}"
        onnx.checker.check_model(model)
        problems = check_io(model, config, dtype, state_dtype)
        if problems:
            raise ExportError(f"exporter {exporter!r}: graph I/O does not match io_spec.py:\n  " + "\n  ".join(problems))
        onnx.save(model, str(tmp))
        written = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        result = ExportResult(path, kind, config, dtype, model_id, exporter=exporter, opset=written,
                              state_dtype=state_dtype, nodes=node_counts(model))
        if check:
            try:
                result.checks = self_check(tmp, config, dtype=dtype, seed=seed, reference=reference)
            except SelfCheckError as exc:
                raise ExportError(f"exporter {exporter!r} (opset {opset}): {exc}") from None
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    result.seconds = time.perf_counter() - t0
    return result


def _cause(exc: BaseException) -> str:
    """The exception's first line, and its root cause's where it has one (torch.onnx wraps what failed in
    "Failed to export the model with torch.export ..."), without terminal colour codes."""
    def line(e):
        return re.sub(r"\x1b\[[0-9;]*m", "", (str(e).strip().splitlines() or [""])[0])[:300]

    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = f"{type(exc).__name__}: {line(exc)}"
    return text if root is exc else f"{text} (root cause {type(root).__name__}: {line(root)})"


def traced_form(branch: str, N: int) -> str:
    """The form traced for an If branch: its own, when a call of its domain exists whose sizes suit tracing
    (`example_sizes`); otherwise (inside needs N >= 6, piece N >= 5) the chunk form, valid for every call."""
    return branch if example_sizes(branch, N) else "chunk"


def example_sizes(form: str, N: int):
    """(batch, n pending, t new) to trace ``form`` with, or None: a call of the form's domain (inside n + t < N,
    piece n + t = N, chunk n + t > N) whose three sizes are >= 2 and distinct. torch.export specialises a dim
    whose example is 0 or 1 to that value, and may take two dims with equal examples for one. The chunk
    form is valid for any n, so for N <= 2 it traces with n = 2 (more than a real state holds)."""
    for n in range(2, max(N, 3)):
        for t in range(2, N + 4):
            L = n + t
            if {"inside": L < N, "piece": L == N, "chunk": L > N}[form] and n != t:
                B = next(b for b in range(2, 6) if b not in (n, t))
                return B, n, t
    return None


_TRACED: dict = {}  # (structure, form) -> serialized graph: the graph depends on the config and options only


def traced(config, params: dict, build, dtype: str, state_dtype: str, form: str, exporter: str, opset: int,
           cache: bool = True):
    """graph.trace of ``form`` of ``build()`` for these weights. A spec model's graph depends on the config and
    the options, never on the weights (they are initializers under their names, never folded), so with ``cache``
    one traced in this process for the same structure is reused with these weights written into its initializers
    (torch.export takes seconds per form); the self-check then runs on the file as always. Another model's
    config does not determine its code: never cached."""
    key = (json.dumps(config.to_dict(), sort_keys=True), dtype, state_dtype, exporter, opset, form)
    arrays = rounded_params(params, dtype, as_float64=False)
    if cache and key in _TRACED:
        model = onnx.load_from_string(_TRACED[key])
        inits = {i.name: i for i in model.graph.initializer}
        if all(n in inits and list(inits[n].dims) == list(a.shape) for n, a in arrays.items()):
            for name, arr in arrays.items():
                inits[name].CopyFrom(onnx.numpy_helper.from_array(arr, name))
            return model
    model = trace(build(), config, dtype, state_dtype, form, exporter, opset,
                  _example_inputs(config, dtype, state_dtype, form))
    if cache:
        _TRACED[key] = model.SerializeToString()
    return model


def check_options(dtype: str, state_dtype: str, exporter: str, opset: int) -> None:
    """The export's options, each error naming the option, what it accepts and what it got."""
    if dtype not in io_spec.COMPUTE_DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(io_spec.COMPUTE_DTYPES)}, got {dtype!r}")
    if state_dtype not in io_spec.STATE_DTYPES:
        raise ValueError(f"state_dtype: expected one of {list(io_spec.STATE_DTYPES)}, got {state_dtype!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {list(EXPORTERS)}, got {exporter!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected an integer in [{MIN_OPSET}, {newest}] (this onnx's newest), got {opset!r}")
    if exporter == "torchscript" and opset > TORCHSCRIPT_MAX_OPSET:
        raise ValueError(f"opset: expected at most {TORCHSCRIPT_MAX_OPSET} with exporter 'torchscript' (it predates "
                         f"the Attention op of opset {ATTENTION_OPSET}), got {opset}; use --opset 17 or the dynamo "
                         "exporter")


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


def fingerprint(config, params: dict, dtype: str, state_dtype: str = "float32") -> str:
    """16 hex digits of sha256 over the config, the dtypes and the weights as exported (a float32 state keeps
    the fingerprint it had before the state dtype was an option)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode() + dtype.encode()
                       + (b"" if state_dtype == "float32" else state_dtype.encode()))
    for name, arr in sorted(rounded_params(params, dtype, as_float64=False).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def rounded_params(params: dict, dtype: str, as_float64: bool = True) -> dict:
    """Parameters as the graph holds them (beta in float32, the rest in the compute dtype)."""
    out = {n: np.asarray(a, np.float64).astype(np.float32 if n.endswith("beta") else dtype) for n, a in params.items()}
    return {n: a.astype(np.float64) for n, a in out.items()} if as_float64 else out


def traced_module(config, params: dict, dtype: str, state_dtype: str = "float32") -> GraphStep:
    """torch_impl's own model for ``config`` in the compute dtype, wrapped for tracing (graph.py). beta stays
    float32 (rounded_params): sigmoid(beta) of a float16 beta would move the gate by up to 1e-3."""
    model = model_from_numpy(config, params, dtype=DTYPES[dtype], check_values=False,
                             state_dtype=DTYPES[state_dtype]).eval()
    with torch.no_grad():
        for i, layer in enumerate(attention_layers(model)):
            layer.beta.data = torch.from_numpy(np.asarray(params[attn_prefix(config, i) + "beta"], np.float32))
    return GraphStep(model, torch.float32 if config.takes_tokens else DTYPES[dtype])  # io_spec: logits float32


def prepared_module(model, dtype: str, state_dtype: str = "float32"):
    """A copy of a protocol model as `traced_module` holds the spec's: in the compute dtype, eval mode, every
    InfiniAttention's beta float32 and its M, z in ``state_dtype``. The user's model is left as it was."""
    model = copy.deepcopy(model).to(DTYPES[dtype]).eval()
    with torch.no_grad():
        for layer in attention_layers(model):
            layer.beta.data = layer.beta.data.float()
            layer.state_dtype, layer.check_values = DTYPES[state_dtype], False
    return model


def _example_inputs(config, dtype: str, state_dtype: str = "float32", form: str = "chunk") -> tuple:
    """Inputs to trace ``form`` with: a call of its domain (`example_sizes`), random values."""
    B, n, t = example_sizes(form, config.segment_len)
    g = torch.Generator().manual_seed(0)
    if config.takes_tokens:
        first = torch.randint(0, config.input_width, (B, t), generator=g)
    else:
        first = torch.randn(B, t, config.input_width, generator=g).to(DTYPES[dtype])
    state = [torch.tensor(0, dtype=torch.int64)]
    for spec in io_spec.inputs(config, dtype, state_dtype):
        if spec.layer is not None:
            shape = tuple({"batch": B, "past_len": n}.get(d, d) if isinstance(d, str) else d for d in spec.dims)
            state.append(torch.rand(shape, generator=g, dtype=DTYPES[spec.dtype]))
    return (first, *state)

"""The module the exporter traces, and tracing it: a torch_impl model (the layer or the LM) with its state
flattened into graph inputs and outputs (SPEC.md §14.1, ``reference/io_spec.py``).

No math is written here. The model's attention layers run one of torch_impl's branch-free forms
(``torch_impl.chunk.form_mode``) with the equations of ``torch_impl.export_forms``:
  inside  a call that stays inside its segment (past_len + chunk < N: decoding): ``decode.inside_piece`` from
          opset 23, ``naive.segment_piece`` (writing nothing) before;
  piece   ``naive.segment_piece`` for a call that ends exactly on a segment boundary (past_len + chunk = N);
  chunk   ``chunk.chunk_forward`` for any longer call (every segment it completes is written).
With opset >= 23 local attention is one ONNX ``Attention`` node (``attention_op.py``), the pending keys and
values as ``past_key``/``past_value``, RoPE one ``RotaryEmbedding`` and the LM's norms ``RMSNormalization``.
Everything else is the model's own ``forward``. Nothing branches on a
size, so batch, chunk and past_len stay symbolic. The state crosses the graph boundary in float32 (M and z
in the state dtype) whatever the compute dtype (SPEC.md §11).

``trace`` runs torch.export (``exporter="dynamo"``, the default) or the TorchScript tracer
(``"torchscript"``, opset <= 20) and returns one ONNX graph per form; ``compose.py`` joins them.
"""
from __future__ import annotations

import io
import logging
import warnings

import onnx
import torch
import torch.nn as nn

from ..reference import io_spec
from ..reference.io_spec import STATE_FIELDS
from ..torch_impl import TorchInfiniState, attention_layers, lm, model_step, naive
from ..torch_impl.chunk import chunk_forward, form_mode
from ..torch_impl.decode import inside_piece
from ..torch_impl.export_forms import equations, lm_norms, norm_op
from .compose import (all_nodes, attend_past_onnx, attend_past_values_onnx, keep_attention_present,
                      rotary_heads_first_onnx, rotary_onnx)

EXPORTERS = ("dynamo", "torchscript")
TORCHSCRIPT_MAX_OPSET = 20  # the TorchScript exporter's newest opset (it has no Attention op)
DYNAMO_MIN_OPSET = 18  # torch.export's ONNX translation writes opset 18 at least (asked for 17, it gives 18)
ATTENTION_OPSET = 23  # the first opset with the standard Attention op
FORMS = {"inside": naive.segment_piece, "piece": naive.segment_piece, "chunk": chunk_forward}
DECODE_FORM = inside_piece  # the inside branch from opset 23 on (its RoPE and attention are opset-23 ops)


class GraphStep(nn.Module):
    """(first input, past_segments, per-layer key, value, M, z) -> (output, present_segments, per-layer ...).

    ``model``: a torch model of the streaming protocol in the compute dtype (``torch_impl/protocol.py``;
    ``InfiniAttention``: x in, y out; ``InfiniTransformerLM`` and other token models: input_ids in, logits out).
    Per-layer tensors follow io_spec's order: key, value, M, z; layer i's state goes to the model's i-th
    InfiniAttention (module order)."""

    def __init__(self, model: nn.Module, output_dtype: torch.dtype):
        super().__init__()
        self.model, self.output_dtype = model, output_dtype
        self.n_layers = len(attention_layers(model))
        self.compute_dtype = attention_layers(model)[0].wq.dtype
        assert len(STATE_FIELDS) == 4  # key, value, M, z: the slicing below follows this order

    def forward(self, first, past_segments, *past):
        dt = self.compute_dtype
        states = [TorchInfiniState(M=past[4 * i + 2], z=past[4 * i + 3], k=past[4 * i].to(dt),
                                   v=past[4 * i + 1].to(dt), segments=past_segments)
                  for i in range(self.n_layers)]
        out, states = model_step(self.model, first, states)
        present = []
        for st in states:
            present += [_float32(st.k), _float32(st.v), st.M, st.z]  # (B, Hkv, n', d) ..., M, z (state dtype)
        return (out.to(self.output_dtype), states[0].segments.reshape(()), *present)


def _float32(t: torch.Tensor) -> torch.Tensor:
    """``t.float()`` of pending keys/values, cast flat. After a call that ends on a boundary their length is
    symbolic with an example of 0, and torch.export's stride rule for a cast of a 4-D tensor (which keeps its
    memory format) then takes a modulo by that 0 where strides tie (n_kv_heads = 1): a ZeroDivisionError that
    failed every float16 export of such a layer. A 1-D cast needs no stride rule."""
    if t.dtype == torch.float32:
        return t
    return t.contiguous().reshape(-1).float().reshape(t.shape)  # (B*Hkv*n*d,) -> (B, Hkv, n, d)


def attention_kind(opset: int) -> str:
    """Local attention by MatMul/Softmax before opset 23, by the standard Attention op from it on."""
    return "op" if opset >= ATTENTION_OPSET else "matmul"


def trace(module: GraphStep, config, dtype: str, state_dtype: str, form: str, exporter: str, opset: int,
          example: tuple) -> onnx.ModelProto:
    """One ONNX graph of ``module`` running ``form`` (a key of FORMS), inputs/outputs named by io_spec and
    initializers by the reference parameter names. Errors propagate (the exporter names the exporter)."""
    specs = io_spec.specs(config, dtype, state_dtype)
    names_in = [s.name for s in specs if s.direction == "in"]
    names_out = [s.name for s in specs if s.direction == "out"]
    eq = equations(form, attention_kind(opset), state_dtype == "float64")
    norms = lm_norms(norm_op if opset >= ATTENTION_OPSET else lm.rms_norm)  # RMSNormalization is opset 23 too
    fn = DECODE_FORM if form == "inside" and opset >= ATTENTION_OPSET else FORMS[form]
    with torch.no_grad(), form_mode(module.model, fn, eq), norms, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and rename notices of both exporters
        module(*example)  # eagerly once: fills naive.rope's table cache with real tensors before tracing
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(module, example, buf, input_names=names_in, output_names=names_out,
                              dynamic_axes=io_spec.dynamic_axes(config, dtype), opset_version=opset, dynamo=False,
                              do_constant_folding=False)  # keep weights under their names
            model = onnx.load_from_string(buf.getvalue())
        else:
            model = _dynamo(module, config, example, names_in, names_out, opset)
    _strip_prefix(model, "model.")
    _name_inputs(model, names_in)
    return model


def _name_inputs(model: onnx.ModelProto, names: list) -> None:
    """Give the graph inputs their io_spec names again: when an output is an input passed through (M, z of a
    call that writes nothing), torch.onnx names the shared value after the output and the input ``..._orig``."""
    renamed = {v.name: want for v, want in zip(model.graph.input, names) if v.name != want}
    for v in model.graph.input:
        v.name = renamed.get(v.name, v.name)
    for node in all_nodes(model.graph):
        node.input[:] = [renamed.get(name, name) for name in node.input]


def _dynamo(module, config, example, names_in, names_out, opset) -> onnx.ModelProto:
    import onnx_ir as ir
    import onnxscript.optimizer

    batch, chunk = torch.export.Dim("batch", min=1), torch.export.Dim("chunk", min=1)
    past_len = torch.export.Dim("past_len", min=0)
    past = []
    for spec in io_spec.inputs(config):
        if spec.layer is not None:  # key/value (batch, Hkv, past_len, d); M, z (batch, ...)
            past.append({0: batch, 2: past_len} if "past_len" in spec.dims else {0: batch})
    table = {torch.ops.infini_attention.attend_past.default: attend_past_onnx,
             torch.ops.infini_attention.attend_past_values.default: attend_past_values_onnx,
             torch.ops.infini_attention.rotary.default: rotary_onnx,
             torch.ops.infini_attention.rotary_heads_first.default: rotary_heads_first_onnx}
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level, registry.level = registry.level, logging.ERROR
    try:
        program = torch.onnx.export(module, example, dynamo=True, input_names=names_in, output_names=names_out,
                                    dynamic_shapes={"first": {0: batch, 1: chunk}, "past_segments": None,
                                                    "past": tuple(past)},
                                    opset_version=max(opset, DYNAMO_MIN_OPSET), optimize=False,
                                    custom_translation_table=table, verbose=False)
    finally:
        registry.setLevel(level)
    model = program.model
    # The optimizer folds constant subgraphs, parameters included (sigmoid(beta), norms of ones): shown to it as
    # graph inputs they stay initializers under their names, which checkpoints and the conformance adapter need.
    names = {"model." + n for n, _ in module.model.named_parameters()}
    params = [v for name, v in model.graph.initializers.items() if name in names]
    model.graph.inputs.extend(params)
    quiet = logging.getLogger("onnx_ir")  # it notes each initializer it may not deduplicate: those above
    level, quiet.level = quiet.level, logging.ERROR
    try:
        onnxscript.optimizer.optimize(model)
        # Every layer computes the same size arithmetic (position ids, masks, shapes) and holds the same
        # constant tables: one copy of each serves all of them.
        ir.passes.common.DeduplicateInitializersPass()(model)
        ir.passes.common.CommonSubexpressionEliminationPass()(model)
        onnxscript.optimizer.optimize(model)
    finally:
        quiet.setLevel(level)
    for v in params:
        model.graph.inputs.remove(v)
    proto = ir.to_proto(model)
    keep_attention_present(proto)
    return proto


def _strip_prefix(model: onnx.ModelProto, prefix: str) -> None:
    """Name initializers by the reference parameter names (``wq``, ``layers.0.attn.wq``): the wrapper's
    attribute name is not part of the format, and the conformance ONNX adapter substitutes weights by name."""
    renamed = {}
    for init in model.graph.initializer:
        if init.name.startswith(prefix):
            renamed[init.name] = init.name[len(prefix):]
            init.name = renamed[init.name]
    for node in all_nodes(model.graph):
        node.input[:] = [renamed.get(name, name) for name in node.input]

"""The many-streams export (SPEC.md §4.4, §14.3): one ONNX graph whose batch rows are independent streams.

Traced from torch_impl's own model running ``torch_impl.ragged.ragged_piece`` (no math here), inputs and
outputs named by ``reference.io_spec.RAGGED_TABLE``. One call carries at most one segment piece per row
(past_pending[b] + chunk_lengths[b] <= segment_len); `export.pool.StreamPool` cuts longer inputs. The file is
made from a stateful export (``infini export``): same config, same weights (read back by
``checkpoint.params_from_onnx``), same model_id, so a stream's state moves between the two layouts.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from ..reference import io_spec
from ..reference.io_spec import METADATA_KEYS, RAGGED_FORMAT, STATE_FIELDS
from ..torch_impl.ragged import RaggedState, ragged_step
from .exporter import DTYPES, traced_module
from .graph import _name_inputs, _strip_prefix
from .io_check import check_io

RAGGED_OPSET = 18  # MatMul/Softmax local attention (the per-row mask is not the Attention op's causal one)
ROWS = len(io_spec.RAGGED_ROW_FIELDS)


class RaggedGraphStep(nn.Module):
    """(first, chunk_lengths, past_pending, past_segments, per-layer key, value, M, z) -> (output, present_pending,
    present_segments, per-layer key, value, M, z): ``GraphStep``'s wrapper for the many-streams layout."""

    def __init__(self, step: nn.Module):
        super().__init__()
        self.model, self.output_dtype = step.model, step.output_dtype
        self.n_layers, self.compute_dtype = step.n_layers, step.compute_dtype
        assert len(STATE_FIELDS) == 4  # key, value, M, z: the slicing below follows this order

    def forward(self, first, lengths, pending, segments, *past):
        lengths, pending, segments = lengths[:, 0], pending[:, 0], segments[:, 0]  # (batch, 1) -> (batch,)
        dt = self.compute_dtype
        states = [RaggedState(M=past[4 * i + 2], z=past[4 * i + 3], k=past[4 * i].to(dt), v=past[4 * i + 1].to(dt),
                              pending=pending, segments=segments) for i in range(self.n_layers)]
        out, states = ragged_step(self.model, first, states, lengths)
        present = []
        for st in states:
            present += [st.k.float(), st.v.float(), st.M, st.z]
        return (out.to(self.output_dtype), states[0].pending[:, None], states[0].segments[:, None], *present)


def example_inputs(config, dtype: str = "float32", state_dtype: str = "float32", batch: int = 3, chunk: int = 2):
    """Random inputs of the ragged graph (rows at different positions; distinct sizes so none is specialised)."""
    N = config.attn.segment_len
    g = torch.Generator().manual_seed(0)
    if config.takes_tokens:
        first = torch.randint(0, config.vocab_size, (batch, chunk), generator=g)
    else:
        first = torch.randn(batch, chunk, config.attn.d_model, generator=g).to(DTYPES[dtype])
    pending = torch.tensor([b % N for b in range(batch)], dtype=torch.int64)
    lengths = torch.minimum(torch.full((batch,), chunk, dtype=torch.int64), N - pending)
    past = []
    for spec in io_spec.ragged_specs(config, dtype, state_dtype):
        if spec.direction == "in" and spec.layer is not None:
            shape = tuple(batch if d == "batch" else d for d in spec.dims)
            past.append(torch.rand(shape, generator=g, dtype=DTYPES[spec.dtype]))
    return (first, lengths[:, None], pending[:, None], torch.arange(batch, dtype=torch.int64)[:, None], *past)


def trace_ragged(config, params: dict, dtype: str = "float32", state_dtype: str = "float32") -> onnx.ModelProto:
    """The ragged graph of ``config`` with ``params`` (reference layout), batch and chunk symbolic."""
    specs = io_spec.ragged_specs(config, dtype, state_dtype)
    names_in = [s.name for s in specs if s.direction == "in"]
    names_out = [s.name for s in specs if s.direction == "out"]
    module = RaggedGraphStep(traced_module(config, params, dtype, state_dtype))
    example = example_inputs(config, dtype, state_dtype)
    batch, chunk = torch.export.Dim("batch", min=1), torch.export.Dim("chunk", min=1)
    rows = {"first": {0: batch, 1: chunk}, "lengths": {0: batch}, "pending": {0: batch}, "segments": {0: batch},
            "past": tuple({0: batch} for _ in example[1 + ROWS:])}
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level, registry.level = registry.level, logging.ERROR
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module(*example)  # fills naive.rope's table cache with real tensors before tracing
            program = torch.onnx.export(module, example, dynamo=True, input_names=names_in, output_names=names_out,
                                        dynamic_shapes=rows, opset_version=RAGGED_OPSET, optimize=True, verbose=False)
    finally:
        registry.setLevel(level)
    model = program.model_proto
    _strip_prefix(model, "model.")
    _name_inputs(model, names_in)
    return model


def write_ragged(source, path) -> Path:
    """The ragged export of the stateful export ``source`` (an .onnx of `infini export`), written atomically to
    ``path``: its config, weights, dtypes and model_id; the I/O checked against RAGGED_TABLE."""
    from .checkpoint import params_from_onnx

    src = onnx.load(str(source), load_external_data=False)
    meta = {p.key: p.value for p in src.metadata_props}
    if meta.get(METADATA_KEYS["format"]) != io_spec.FORMAT:
        raise ValueError(f"model: expected a stateful export of `infini export` (metadata format {io_spec.FORMAT!r}),"
                         f" got {meta.get(METADATA_KEYS['format'])!r} in {str(source)!r}")
    kind = meta.get(METADATA_KEYS["kind"])
    if kind not in ("lm", "layer"):  # the many-streams form is traced from the spec's own modules
        raise ValueError(f"model: expected an export of the spec's LM or layer (kind 'lm' or 'layer'), got kind "
                         f"{kind!r} in {str(source)!r}: a model exported with --module has no many-streams form yet")
    config, params = params_from_onnx(source)
    dtype, state_dtype = meta[METADATA_KEYS["compute_dtype"]], meta.get(METADATA_KEYS["state_dtype"], "float32")
    model = trace_ragged(config, params, dtype, state_dtype)
    meta[METADATA_KEYS["format"]] = RAGGED_FORMAT
    meta[METADATA_KEYS["contract"]] = ("each call: per row, chunk_lengths[b] real tokens of the padded chunk with "
                                       "past_pending[b] + chunk_lengths[b] <= segment_len")
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    problems = check_io(model, config, dtype, state_dtype, io_spec.ragged_specs)
    if problems:
        raise RuntimeError("ragged export: graph I/O does not match io_spec.RAGGED_TABLE:\n  " + "\n  ".join(problems))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def model_config(path) -> tuple:
    """(format, config, metadata dict) of an .onnx file, read without ONNX Runtime."""
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    config = io_spec.config_from_json(meta[METADATA_KEYS["config"]]) if METADATA_KEYS["config"] in meta else None
    return meta.get(METADATA_KEYS["format"]), config, meta

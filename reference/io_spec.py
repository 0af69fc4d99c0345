"""Every input and output of the exported graphs, declared once (SPEC.md §14.1).

One ONNX call takes any number of tokens (``chunk`` >= 1): the graph processes every segment the call
completes and leaves the rest pending, exactly as a call of the reference does (SPEC.md §4.3). Names
follow the KV-cache export convention (``past_key_values.{i}.key`` in, ``present.{i}.key`` out) with the
compressive memory alongside (``past_memory.{i}.M`` in, ``present_memory.{i}.M`` out). ``{i}`` is the
layer, 0 .. n_layers-1 (a single-layer export has i = 0 only). Graph order: the first row,
``past_segments``, then for each layer key, value, M, z (inputs; outputs likewise).

Three kinds of model (the config's ``kind``): ``lm`` (SPEC.md §9), ``layer`` (one attention layer) and
``model``: any other streaming model built on the layers (``ModelConfig``; e.g. a LayerNorm/GELU model,
or a converted checkpoint). A model that takes token ids has the ``input_ids`` / ``logits`` rows, one that
takes vectors the ``x`` / ``y`` rows, with its own widths: ``x``'s last dim is its input width, ``y``'s and
``logits``' its output width (for the spec's models d_model, d_model and vocab_size). Each layer's state rows take that layer's own n_kv_heads, d_key, d_value (layers of one
``model`` may differ in them; they share segment_len).

| name                        | dir | shape                                    | dtype   | meaning |
|-----------------------------|-----|------------------------------------------|---------|---------|
| `input_ids`                 | in  | (batch, chunk)                           | int64   | LM: token ids, in [0, vocab_size) |
| `x`                         | in  | (batch, chunk, d_model)                  | compute | layer: the layer's input |
| `past_segments`             | in  | ()                                       | int64   | segments completed so far (all layers) |
| `past_key_values.{i}.key`   | in  | (batch, n_kv_heads, past_len, d_key)     | float32 | keys (before RoPE) of the unfinished segment, past_len = n < N |
| `past_key_values.{i}.value` | in  | (batch, n_kv_heads, past_len, d_value)   | float32 | values of the unfinished segment |
| `past_memory.{i}.M`         | in  | (batch, n_kv_heads, d_key, d_value)      | state   | compressive memory M of the completed segments |
| `past_memory.{i}.z`         | in  | (batch, n_kv_heads, d_key)               | state   | its normaliser z (sum of sigma(k)) |
| `logits`                    | out | (batch, chunk, vocab_size)               | float32 | LM: next-token logits |
| `y`                         | out | (batch, chunk, d_model)                  | compute | layer: the layer's output |
| `present_segments`          | out | ()                                       | int64   | past_segments + the segments the call completed |
| `present.{i}.key`           | out | (batch, n_kv_heads, present_len, d_key)  | float32 | present_len = (past_len + chunk) mod N |
| `present.{i}.value`         | out | (batch, n_kv_heads, present_len, d_value)| float32 | |
| `present_memory.{i}.M`      | out | (batch, n_kv_heads, d_key, d_value)      | state   | M, with every completed segment written |
| `present_memory.{i}.z`      | out | (batch, n_kv_heads, d_key)               | state   | z, likewise |

"compute" is the export dtype: float32 (default) or float16; "state" the dtype of M and z: float32
(default) or float64 (SPEC.md §11); pending keys/values are float32 either way.
batch, chunk, past_len and present_len are symbolic (dynamic) dims; the others are fixed by
the model's config, which the file carries in its metadata (`METADATA_KEYS`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .config import InfiniConfig, LMConfig, ModelConfig, config_from_dict

SYMBOLIC_DIMS = ("batch", "chunk", "past_len", "present_len")
STATE_FIELDS = ("key", "value", "M", "z")  # per layer, in graph order

# (name template, direction, dims, dtype, which models: "tokens" (token ids in) / "vectors" / "both")
_TABLE = (
    ("input_ids", "in", ("batch", "chunk"), "int64", "tokens"),
    ("x", "in", ("batch", "chunk", "input_width"), "compute", "vectors"),
    ("past_segments", "in", (), "int64", "both"),
    ("past_key_values.{i}.key", "in", ("batch", "n_kv_heads", "past_len", "d_key"), "float32", "both"),
    ("past_key_values.{i}.value", "in", ("batch", "n_kv_heads", "past_len", "d_value"), "float32", "both"),
    ("past_memory.{i}.M", "in", ("batch", "n_kv_heads", "d_key", "d_value"), "state", "both"),
    ("past_memory.{i}.z", "in", ("batch", "n_kv_heads", "d_key"), "state", "both"),
    ("logits", "out", ("batch", "chunk", "output_width"), "float32", "tokens"),
    ("y", "out", ("batch", "chunk", "output_width"), "compute", "vectors"),
    ("present_segments", "out", (), "int64", "both"),
    ("present.{i}.key", "out", ("batch", "n_kv_heads", "present_len", "d_key"), "float32", "both"),
    ("present.{i}.value", "out", ("batch", "n_kv_heads", "present_len", "d_value"), "float32", "both"),
    ("present_memory.{i}.M", "out", ("batch", "n_kv_heads", "d_key", "d_value"), "state", "both"),
    ("present_memory.{i}.z", "out", ("batch", "n_kv_heads", "d_key"), "state", "both"),
)

# ONNX metadata_props written by the exporter and checked by the runtime.
METADATA_KEYS = {
    "format": "infini_attention.format",  # FORMAT below
    "kind": "infini_attention.kind",  # "lm", "layer" or "model"
    "config": "infini_attention.config",  # JSON of LMConfig / InfiniConfig / ModelConfig .to_dict()
    "compute_dtype": "infini_attention.compute_dtype",  # "float32" or "float16"
    "state_dtype": "infini_attention.state_dtype",  # "float32" or "float64": M and z
    "model_id": "infini_attention.model_id",  # sha256 of config + exported weights (16 hex)
    "spec_version": "infini_attention.spec_version",  # reference.SPEC_VERSION
    "contract": "infini_attention.contract",  # what one call may carry, in words
    "exporter": "infini_attention.exporter",  # "dynamo" or "torchscript": which tracer wrote the graph
    "aliases": "infini_attention.aliases",  # JSON {parameter: initializer} for weights merged on export
}
FORMAT = "infini-attention-onnx/2"
CONTRACT = "each call: any chunk >= 1 tokens; every segment it completes is written, the rest stays pending"
# Formats a runtime can recognise but this version does not run, with what to do about them.
OLD_FORMATS = {"infini-attention-onnx/1": "one segment piece per call (past_len + chunk <= segment_len); "
                                          "re-export it with this version (`infini export`)"}
COMPUTE_DTYPES = ("float32", "float16")
STATE_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    direction: str  # "in" / "out"
    dims: tuple  # ints, or names from SYMBOLIC_DIMS
    dtype: str  # "float32" / "float16" / "int64"
    layer: int | None  # the layer of a state tensor, else None

    @property
    def is_state(self) -> bool:
        return self.layer is not None or self.name.endswith("_segments")


def kind_of(config) -> str:
    """"lm", "layer" or "model" (the configs' shared protocol); anything else is a usage error naming its type."""
    if not isinstance(config, (LMConfig, InfiniConfig, ModelConfig)):
        raise ValueError(f"config: expected an LMConfig, an InfiniConfig or a ModelConfig, got {type(config).__name__}")
    return config.kind


def specs(config: LMConfig | InfiniConfig | ModelConfig, compute_dtype: str = "float32",
          state_dtype: str = "float32", table: tuple = _TABLE) -> list[TensorSpec]:
    """The concrete inputs then outputs of the graph exported for ``config``, in graph order (``table``:
    ``_TABLE``, or ``RAGGED_TABLE`` for the many-streams layout)."""
    for name, value, allowed in (("compute_dtype", compute_dtype, COMPUTE_DTYPES),
                                 ("state_dtype", state_dtype, STATE_DTYPES)):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    kind_of(config)
    which = "tokens" if config.takes_tokens else "vectors"
    widths = {"input_width": config.input_width, "output_width": config.output_width}
    out = []
    for direction in ("in", "out"):
        rows = [r for r in table if r[1] == direction and r[4] in (which, "both")]
        plain, per_layer = [r for r in rows if "{i}" not in r[0]], [r for r in rows if "{i}" in r[0]]
        for layer, group in [(None, plain)] + [(i, per_layer) for i in range(config.n_layers)]:
            attn = config.layer_configs[layer] if layer is not None else None
            sizes = widths if attn is None else {"n_kv_heads": attn.n_kv_heads, "d_key": attn.d_key,
                                                 "d_value": attn.d_value, "segment_len": attn.segment_len}
            for name, _, dims, dtype, _ in group:  # graph order: plain rows, then layer 0's, layer 1's, ...
                dims = tuple(d if not isinstance(d, str) or d in SYMBOLIC_DIMS else sizes[d] for d in dims)
                dtype = {"compute": compute_dtype, "state": state_dtype}.get(dtype, dtype)
                out.append(TensorSpec(name.format(i=layer), direction, dims, dtype, layer))
    return out


def inputs(config, compute_dtype="float32", state_dtype="float32") -> list[TensorSpec]:
    return [s for s in specs(config, compute_dtype, state_dtype) if s.direction == "in"]


def dynamic_axes(config, compute_dtype="float32") -> dict[str, dict[int, str]]:
    """``{name: {axis: dim name}}`` for torch.onnx.export (symbolic dims only)."""
    axes = {s.name: {a: d for a, d in enumerate(s.dims) if isinstance(d, str)} for s in specs(config, compute_dtype)}
    return {n: a for n, a in axes.items() if a}


def config_from_json(text: str) -> LMConfig | InfiniConfig | ModelConfig:
    return config_from_dict(json.loads(text))


def markdown_table(config, compute_dtype="float32", state_dtype="float32") -> str:
    """The table above with every size resolved for ``config`` (for reports and the CLI)."""
    rows = ["| name | dir | shape | dtype |", "|---|---|---|---|"]
    for s in specs(config, compute_dtype, state_dtype):
        rows.append(f"| `{s.name}` | {s.direction} | ({', '.join(map(str, s.dims))}) | {s.dtype} |")
    return "\n".join(rows)


# Many streams in one call (SPEC.md §4.4, §14.3): every batch row is its own stream. The per-row fields replace
# the shared counter and the past_len dim: pending keys/values sit in segment_len slots per row, of which
# ``past_pending[b]`` are valid (the rest zero); ``chunk_lengths[b]`` of the call's (padded) chunk are real, with
# past_pending[b] + chunk_lengths[b] <= segment_len. Padding is never attended nor written; its outputs are 0.
# The per-row fields are (batch, 1), not (batch,): a per-sequence tensor of Triton's implicit state has dims [1].
RAGGED_FORMAT = "infini-attention-onnx-ragged/1"
RAGGED_TABLE = (
    ("input_ids", "in", ("batch", "chunk"), "int64", "tokens"),
    ("x", "in", ("batch", "chunk", "input_width"), "compute", "vectors"),
    ("chunk_lengths", "in", ("batch", 1), "int64", "both"),
    ("past_pending", "in", ("batch", 1), "int64", "both"),
    ("past_segments", "in", ("batch", 1), "int64", "both"),
    ("past_key_values.{i}.key", "in", ("batch", "n_kv_heads", "segment_len", "d_key"), "float32", "both"),
    ("past_key_values.{i}.value", "in", ("batch", "n_kv_heads", "segment_len", "d_value"), "float32", "both"),
    ("past_memory.{i}.M", "in", ("batch", "n_kv_heads", "d_key", "d_value"), "state", "both"),
    ("past_memory.{i}.z", "in", ("batch", "n_kv_heads", "d_key"), "state", "both"),
    ("logits", "out", ("batch", "chunk", "output_width"), "float32", "tokens"),
    ("y", "out", ("batch", "chunk", "output_width"), "compute", "vectors"),
    ("present_pending", "out", ("batch", 1), "int64", "both"),
    ("present_segments", "out", ("batch", 1), "int64", "both"),
    ("present.{i}.key", "out", ("batch", "n_kv_heads", "segment_len", "d_key"), "float32", "both"),
    ("present.{i}.value", "out", ("batch", "n_kv_heads", "segment_len", "d_value"), "float32", "both"),
    ("present_memory.{i}.M", "out", ("batch", "n_kv_heads", "d_key", "d_value"), "state", "both"),
    ("present_memory.{i}.z", "out", ("batch", "n_kv_heads", "d_key"), "state", "both"),
)
RAGGED_ROW_FIELDS = ("chunk_lengths", "past_pending", "past_segments")  # the per-row inputs before the layers'


def ragged_specs(config, compute_dtype="float32", state_dtype="float32") -> list[TensorSpec]:
    """The many-streams graph's inputs then outputs, in graph order (RAGGED_TABLE)."""
    return specs(config, compute_dtype, state_dtype, RAGGED_TABLE)

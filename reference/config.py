"""Configuration of one Infini-attention layer and of the Infini-Transformer LM (SPEC.md §2, §9)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

UPDATES = ("linear", "delta")
ROPE_STYLES = ("half", "interleaved")
GATE_ON = ("memory", "local")
FIRST_SEGMENT = ("gated", "local_only")
PROFILE_CHOICES = {"gate_on": GATE_ON, "first_segment": FIRST_SEGMENT}  # the conventions of SPEC.md §8.2


def _require(ok: bool, name: str, expected: str, actual) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {actual!r}")


def _positive_int(name: str, value) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             name, "an integer >= 1", value)


@dataclass(frozen=True)
class InfiniConfig:
    """Every option of SPEC.md §2; defaults are the paper's choices.

    The layer, the LM and any other streaming model (`ModelConfig`) share one small protocol: ``kind``
    ("layer" / "lm" / "model"), ``n_layers`` (1 for a layer), ``layer_configs`` (each attention layer's
    config, module order), ``segment_len`` (every layer's), ``takes_tokens``, ``input_width`` (vocab_size
    or the input's last dim) and ``output_width``, so code that serves all three reads these instead of
    testing the type. ``attn`` (the one attention config) exists on the layer and the LM only.
    """

    kind: ClassVar[str] = "layer"

    d_model: int
    n_heads: int
    n_kv_heads: int
    d_key: int
    d_value: int
    segment_len: int
    update: str = "linear"
    rope_theta: float | None = None
    rope_style: str = "half"
    eps: float = 1e-6
    scale: float | None = None
    gate_on: str = "memory"
    first_segment: str = "gated"

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_kv_heads", "d_key", "d_value", "segment_len"):
            _positive_int(name, getattr(self, name))
        _require(self.n_heads % self.n_kv_heads == 0, "n_heads",
                 f"a multiple of n_kv_heads={self.n_kv_heads}", self.n_heads)
        _require(self.update in UPDATES, "update", f"one of {UPDATES}", self.update)
        _require(self.rope_style in ROPE_STYLES, "rope_style", f"one of {ROPE_STYLES}", self.rope_style)
        _require(self.gate_on in GATE_ON, "gate_on", f"one of {GATE_ON}", self.gate_on)
        _require(self.first_segment in FIRST_SEGMENT, "first_segment",
                 f"one of {FIRST_SEGMENT}", self.first_segment)
        if self.rope_theta is not None:
            _require(_finite_positive(self.rope_theta), "rope_theta", "None or a finite number > 0",
                     self.rope_theta)
            _require(self.d_key % 2 == 0, "d_key", "an even number when rope_theta is set (RoPE rotates pairs)",
                     self.d_key)
        _require(_finite_positive(self.eps), "eps", "a finite number > 0", self.eps)
        if self.scale is not None:
            _require(_finite_positive(self.scale), "scale", "None or a finite number > 0", self.scale)

    @property
    def attn(self) -> "InfiniConfig":
        return self

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def layer_configs(self) -> tuple:
        return (self,)

    @property
    def takes_tokens(self) -> bool:
        """The model's input: x (B, T, d_model) for a layer, token ids (B, T) for the LM."""
        return False

    @property
    def input_width(self) -> int:
        """The last dim of the model's input x (a layer), or the vocabulary of its token ids (the LM)."""
        return self.d_model

    @property
    def output_width(self) -> int:
        """The last dim of the model's output: d_model (y) for a layer, vocab_size (logits) for the LM."""
        return self.d_model

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (SPEC.md §3)."""
        return self.n_heads // self.n_kv_heads

    @property
    def attn_scale(self) -> float:
        """The local-attention scale actually used: `scale`, or 1/sqrt(d_key) (SPEC.md §5)."""
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.d_key)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "InfiniConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, "config", f"only the fields {sorted(known)}", unknown)
        return cls(**data)

    def replace(self, **changes) -> "InfiniConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LMConfig:
    """The minimal Infini-Transformer language model of SPEC.md §9 (``kind`` "lm": see InfiniConfig)."""

    kind: ClassVar[str] = "lm"

    vocab_size: int
    n_layers: int
    d_ff: int
    attn: InfiniConfig
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_ff"):
            _positive_int(name, getattr(self, name))
        _require(isinstance(self.attn, InfiniConfig), "attn", "an InfiniConfig", type(self.attn).__name__)
        _require(_finite_positive(self.norm_eps), "norm_eps", "a finite number > 0", self.norm_eps)

    @property
    def d_model(self) -> int:
        return self.attn.d_model

    takes_tokens: ClassVar[bool] = True

    @property
    def layer_configs(self) -> tuple:
        return (self.attn,) * self.n_layers

    @property
    def segment_len(self) -> int:
        return self.attn.segment_len

    @property
    def input_width(self) -> int:
        return self.vocab_size

    @property
    def output_width(self) -> int:
        return self.vocab_size

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["attn"] = self.attn.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LMConfig":
        data = dict(data)
        _require("attn" in data, "config", "an 'attn' entry", sorted(data))
        data["attn"] = InfiniConfig.from_dict(data["attn"])
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """What the ONNX format needs to know of any other streaming model built on Infini-attention layers
    (``kind`` "model", issue 11): its attention layers' configs in module order, its input (token ids in
    [0, input_width), or vectors (B, T, input_width)) and its output width. How it computes between the
    layers is its own ``forward`` (``torch_impl.protocol``), which no config describes.

    All layers share one ``segment_len``: a stream is cut into segments of one length N, and one call's
    branch (inside a segment, ending on a boundary, longer) is chosen by that N for every layer. Layers
    may differ in everything else (heads, key/value dims, update rule, RoPE, gate conventions).
    ``name``: where the model came from (e.g. ``pkg.models:build``), informational only."""

    kind: ClassVar[str] = "model"

    layers: tuple
    input_width: int
    output_width: int
    takes_tokens: bool
    name: str = ""

    def __post_init__(self) -> None:
        _require(isinstance(self.layers, (tuple, list)) and len(self.layers) >= 1
                 and all(isinstance(c, InfiniConfig) for c in self.layers),
                 "layers", "a non-empty sequence of InfiniConfig (one per attention layer)", self.layers)
        object.__setattr__(self, "layers", tuple(self.layers))
        lengths = [c.segment_len for c in self.layers]
        _require(len(set(lengths)) == 1, "layers", "one segment_len shared by every attention layer (a stream is "
                 "cut into segments of one length)", f"segment_len {lengths}")
        for name in ("input_width", "output_width"):
            _positive_int(name, getattr(self, name))
        _require(isinstance(self.takes_tokens, bool), "takes_tokens", "True or False", self.takes_tokens)
        _require(isinstance(self.name, str), "name", "a string", self.name)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def layer_configs(self) -> tuple:
        return self.layers

    @property
    def segment_len(self) -> int:
        return self.layers[0].segment_len

    @property
    def vocab_size(self) -> int | None:
        """The input vocabulary of a model that takes token ids (None for one that takes vectors)."""
        return self.input_width if self.takes_tokens else None

    def to_dict(self) -> dict:
        return {"layers": [c.to_dict() for c in self.layers], "input_width": self.input_width,
                "output_width": self.output_width, "takes_tokens": self.takes_tokens, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, "config", f"only the fields {sorted(known)}", unknown)
        _require(isinstance(data.get("layers"), list), "config", "a 'layers' list", type(data.get("layers")).__name__)
        return cls(**{**data, "layers": tuple(InfiniConfig.from_dict(c) for c in data["layers"])})


DEFAULT_PROFILE = {name: InfiniConfig.__dataclass_fields__[name].default for name in PROFILE_CHOICES}


def config_from_dict(data: dict) -> LMConfig | InfiniConfig | ModelConfig:
    """An LMConfig (the dict has an ``attn`` entry), a ModelConfig (``layers``) or an InfiniConfig, from
    ``to_dict()`` output."""
    _require(isinstance(data, dict), "config", "a dict of config fields", type(data).__name__)
    if "layers" in data:
        return ModelConfig.from_dict(data)
    return LMConfig.from_dict(data) if "attn" in data else InfiniConfig.from_dict(data)


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0

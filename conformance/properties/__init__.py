"""The named properties of the conformance suite, in the order they run (each cites SPEC.md)."""
from . import gradients, semantics, streams, structure  # noqa: F401  (importing registers them)
from .base import PROPERTIES, Check, Example, Property, Settings, prop

ORDER = ("output_contract", "outputs", "state", "split_invariance", "fresh_stream", "causality",
         "batch_independence", "head_layout", "gqa_mapping", "local_attention", "gate_limits", "first_segment",
         "update_rule", "long_stream", "gradients")
_rank = {name: i for i, name in enumerate(ORDER)}
PROPERTIES = dict(sorted(PROPERTIES.items(), key=lambda kv: _rank.get(kv[0], len(ORDER))))

__all__ = ["PROPERTIES", "ORDER", "Check", "Example", "Property", "Settings", "prop"]

"""ONNX export of Infini-attention with explicit state, and streaming in ONNX Runtime (issue 4).

    export(config, params, "model.onnx")       -> checked file (exporter.py; I/O table: reference/io_spec.py)
    export_model(my_model, "model.onnx")       -> any torch model of the streaming protocol (torch_impl/protocol.py)
    InfiniSession("model.onnx").feed(tokens)   -> logits, any split, constant memory (session.py)

Names are imported lazily so that the runtime side (session.py) never imports torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "export": "exporter", "export_model": "exporter", "ExportError": "exporter", "ExportResult": "exporter",
    "InfiniSession": "session", "PRESETS": "presets", "preset_config": "presets", "preset_params": "presets",
    "cuda_status": "providers", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
}


# The ONNX I/O format is spec material (SPEC.md §14.1): it lives in the reference package.
_SPEC = {"specs", "markdown_table", "METADATA_KEYS", "FORMAT"}
__all__ = sorted(set(_LAZY) | _SPEC)


def __getattr__(name: str):
    if name in _SPEC:
        return getattr(importlib.import_module("..reference.io_spec", __name__), name)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""ONNX export of Infini-attention with explicit state, and streaming in ONNX Runtime (issue 4).

    export(config, params, "model.onnx")       -> checked file (exporter.py; I/O table: io_spec.py)
    InfiniSession("model.onnx").feed(tokens)   -> logits, any split, constant memory (session.py)

Names are imported lazily so that the runtime side (session.py) never imports torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "export": "exporter", "ExportError": "exporter", "ExportResult": "exporter",
    "InfiniSession": "session", "PRESETS": "presets", "preset_config": "presets", "preset_params": "presets",
    "specs": "io_spec", "markdown_table": "io_spec", "METADATA_KEYS": "io_spec", "FORMAT": "io_spec",
    "cuda_status": "providers", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The passkey model's config, checkpoint I/O and memory-off control, re-exported for the example's scripts.

They live in the package (`infini_attention.export.passkey.model`, with the committed checkpoints as
package data) so that `infini demo` runs from an installed wheel; ``HERE`` is this folder, where the
example writes its results.
"""
from __future__ import annotations

from pathlib import Path

from infini_attention.export.passkey.model import (CHECKPOINT_DIR, MEMORY_OFF_BETA, checkpoint_path,
                                                   default_config, gate_values, load_checkpoint, memory_off,
                                                   save_checkpoint, state_bytes)

HERE = Path(__file__).resolve().parent
__all__ = ["CHECKPOINT_DIR", "HERE", "MEMORY_OFF_BETA", "checkpoint_path", "default_config", "gate_values",
           "load_checkpoint", "memory_off", "save_checkpoint", "state_bytes"]

"""The passkey model's configuration, checkpoint I/O and the memory-off control.

The two committed checkpoints (``checkpoints/passkey_{linear,delta}.npz`` beside this file) ship
as package data, so `infini demo` runs from an installed wheel; examples/passkey trains and
evaluates them through these same functions.

A checkpoint is one ``.npz``: the reference-layout parameter dict (float32, the names of
``infini_attention.reference.lm_param_shapes``) plus ``__config__`` (the LMConfig as JSON): the
format ``infini export --checkpoint`` reads. Training facts go to a sidecar ``.json``. It loads
into the NumPy reference, the torch model and the ONNX export alike.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...reference import InfiniConfig, LMConfig

from .data import VOCAB_SIZE

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MEMORY_OFF_BETA = -30.0  # sigmoid(-30) ~ 1e-13: the gate selects the local branch in every head


def default_config(update: str = "delta", segment_len: int = 32, d_model: int = 64, n_heads: int = 4,
                   n_layers: int = 2, d_ff: int = 128, d_head: int | None = None) -> LMConfig:
    d_head = d_head or d_model // n_heads
    attn = InfiniConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads, d_key=d_head, d_value=d_head,
                        segment_len=segment_len, update=update, rope_theta=10000.0)
    return LMConfig(vocab_size=VOCAB_SIZE, n_layers=n_layers, d_ff=d_ff, attn=attn)


def checkpoint_path(update: str) -> Path:
    return CHECKPOINT_DIR / f"passkey_{update}.npz"


def save_checkpoint(path, config: LMConfig, params: dict, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {n: np.asarray(a, dtype=np.float32) for n, a in params.items()}
    arrays["__config__"] = np.array(json.dumps(config.to_dict()))
    with open(path, "wb") as f:  # np.savez_compressed(path) would append ".npz" to other suffixes
        np.savez_compressed(f, **arrays)
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def load_checkpoint(path) -> tuple[LMConfig, dict[str, np.ndarray], dict]:
    """-> (config, params as float32 arrays, meta)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        config = LMConfig.from_dict(json.loads(str(z["__config__"])))
        params = {n: z[n] for n in z.files if not n.startswith("__")}
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    return config, params, meta


def memory_off(params: dict, beta: float = MEMORY_OFF_BETA) -> dict:
    """The control: the same weights with every gate forced to the local branch."""
    out = dict(params)
    for name in params:
        if name.endswith(".attn.beta"):
            out[name] = np.full_like(params[name], beta)
    return out


def gate_values(params: dict, config: LMConfig) -> np.ndarray:
    """sigmoid(beta) per layer and head, (n_layers, n_heads): the weight of the memory branch."""
    betas = np.stack([np.asarray(params[f"layers.{i}.attn.beta"], dtype=np.float64)
                      for i in range(config.n_layers)])
    s = 1.0 / (1.0 + np.exp(-betas))
    return s if config.attn.gate_on == "memory" else 1.0 - s


def state_bytes(config: LMConfig, dtype_bytes: int = 4) -> int:
    """Bytes of the compressive memory (M and z of every head of every layer), whatever the length."""
    a = config.attn
    return config.n_layers * a.n_kv_heads * a.d_key * (a.d_value + 1) * dtype_bytes

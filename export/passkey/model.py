"""The passkey model's configuration, checkpoint I/O and the memory-off control.

The two committed checkpoints (``checkpoints/passkey_{linear,delta}.safetensors`` beside this file) ship
as package data, so `infini demo` runs from an installed wheel; examples/passkey trains and
evaluates them through these same functions.

A checkpoint is one ``.safetensors`` file (torch_impl/pretrained.py): the reference-layout parameters
(float32, the names of ``infini_attention.reference.lm_param_shapes``) with the LMConfig as JSON in its
metadata: the format ``infini export --checkpoint`` reads. Training facts go to a sidecar ``.json``. It
loads into the NumPy reference, the torch model and the ONNX export alike. The ``.npz`` files of earlier
versions (the arrays plus a ``__config__`` entry; the committed weights until issue 11, bit-identical)
still load.
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
    return CHECKPOINT_DIR / f"passkey_{update}.safetensors"


def save_checkpoint(path, config: LMConfig, params: dict, meta: dict | None = None) -> Path:
    """Write ``params`` (float32) with ``config`` as safetensors at ``path`` (an ``.npz`` suffix becomes
    ``.safetensors``), ``meta`` to the sidecar ``.json``. Returns the path written."""
    import torch

    from ...torch_impl.pretrained import write_file

    path = Path(path)
    path = path.with_suffix(".safetensors") if path.suffix == ".npz" else path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, config, {n: torch.from_numpy(np.asarray(a, dtype=np.float32)) for n, a in params.items()})
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def load_checkpoint(path) -> tuple[LMConfig, dict[str, np.ndarray], dict]:
    """-> (config, params as float32 arrays, meta) of a safetensors checkpoint or an older ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            config = LMConfig.from_dict(json.loads(str(z["__config__"])))
            params = {n: z[n] for n in z.files if not n.startswith("__")}
    else:
        from ...torch_impl.pretrained import read

        config, tensors = read(path)  # checked against the config; a corrupt file is one line naming it
        if config.kind != "lm":
            raise ValueError(f"checkpoint {str(path)!r}: expected a passkey LM checkpoint, got kind {config.kind!r}")
        params = {n: t.numpy() for n, t in tensors.items()}
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

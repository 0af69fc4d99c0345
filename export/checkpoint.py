"""PyTorch checkpoints that `infini export --checkpoint` reads (and the demo writes).

`params_from_onnx` reads the weights back out of an exported file (conformance adapters).

A checkpoint is ``torch.save({"format": CHECKPOINT_FORMAT, "config": config.to_dict(),
"state_dict": model.state_dict()})`` for a torch_impl `InfiniTransformerLM` (an LMConfig) or
`InfiniAttention` (an InfiniConfig): their parameter names are the reference names, so the
state_dict is the reference parameter dict. An ``.npz`` of reference arrays with a
``__config__`` JSON entry is accepted too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..reference.io_spec import config_from_json, kind_of

CHECKPOINT_FORMAT = "infini-attention-checkpoint/1"


def save_checkpoint(path, config, params) -> Path:
    """Write ``params`` (a reference dict of arrays, or a torch_impl module) with its config."""
    import torch

    kind_of(config)
    if hasattr(params, "numpy_params"):
        params = params.numpy_params()
    state_dict = {k: torch.as_tensor(np.asarray(v)) for k, v in params.items()}
    path = Path(path)
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "state_dict": state_dict}, path)
    return path


def load_checkpoint(path):
    """(config, params as float64 reference arrays) from a .pt/.pth/.ckpt or .npz checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected a file, got {str(path)!r}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "__config__" not in npz.files:
                raise ValueError(f"checkpoint {str(path)!r}: expected a '__config__' JSON entry beside the arrays")
            config = config_from_json(str(npz["__config__"]))
            return config, {k: npz[k].astype(np.float64) for k in npz.files if k != "__config__"}
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "config" not in data or "state_dict" not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"checkpoint {str(path)!r}: expected a dict with 'config' and 'state_dict' "
                         f"(export.checkpoint.save_checkpoint), got {got}")
    config = config_from_json(json.dumps(data["config"]))
    params = {k: v.detach().to(torch.float64).numpy() for k, v in data["state_dict"].items()}
    return config, params


def params_from_onnx(path) -> tuple:
    """(config, reference-layout float64 params) read back from an exported file's initializers."""
    import onnx
    from onnx import numpy_helper

    from ..reference import LMConfig, lm_param_shapes, param_shapes
    from ..reference.io_spec import METADATA_KEYS

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEYS["config"] not in meta:
        raise ValueError(f"model {str(path)!r}: expected an Infini-attention export (no config in its metadata)")
    config = config_from_json(meta[METADATA_KEYS["config"]])
    aliases = json.loads(meta.get(METADATA_KEYS["aliases"], "{}"))
    inits = {i.name: i for i in model.graph.initializer}
    shapes = lm_param_shapes(config) if isinstance(config, LMConfig) else param_shapes(config)
    missing = [n for n in shapes if aliases.get(n, n) not in inits]
    if missing:
        raise ValueError(f"model {str(path)!r}: expected initializers for every parameter, missing {missing[:5]}")
    return config, {n: numpy_helper.to_array(inits[aliases.get(n, n)]).astype(np.float64) for n in shapes}

"""Checkpoints that `infini export --checkpoint` reads and the project writes.

`save_checkpoint` writes safetensors (torch_impl/pretrained.py): ``PATH.safetensors``, one file with the
config in its metadata, or any other path a directory in the Hugging Face layout (``config.json`` +
``model.safetensors``, what ``save_pretrained`` writes). Tensor names are the reference names (SPEC.md
§3.1, §9). `load_checkpoint` reads those, and the older formats: ``torch.save({"format":
CHECKPOINT_FORMAT, "config": ..., "state_dict": ...})`` (.pt/.pth/.ckpt) and an ``.npz`` of reference
arrays with a ``__config__`` JSON entry. Files are recognised by content, not by suffix.

`params_from_onnx` reads the weights back out of an exported file (conformance adapters).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..reference.io_spec import config_from_json, kind_of

CHECKPOINT_FORMAT = "infini-attention-checkpoint/1"
LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".npz")


def save_checkpoint(path, config, params) -> Path:
    """Write ``params`` (a reference dict of arrays or tensors, or a torch_impl module) with its config, as
    safetensors: ``*.safetensors`` one file; a legacy suffix (.pt, .npz, ...) is replaced by .safetensors;
    any other path a save_pretrained directory. Returns the path written; nothing is written on bad input."""
    import torch

    from ..torch_impl import pretrained

    kind_of(config)
    if hasattr(params, "named_parameters"):
        tensors = dict(params.named_parameters())
    else:
        tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
                   for k, v in params.items()}
    path = Path(path)
    if path.suffix in LEGACY_SUFFIXES:
        path = path.with_suffix(".safetensors")
    if path.suffix == ".safetensors":
        return pretrained.write_file(path, config, tensors)
    return pretrained.save_dir(path, config, tensors)


def _is_safetensors(path: Path) -> bool:
    """8-byte little-endian header length, then the JSON header: '{' (torch.save and .npz files are zips)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def load_checkpoint(path):
    """(config, params as float64 reference arrays) from a safetensors file or directory, a .pt or an .npz."""
    path = Path(path)
    if path.is_dir() or (path.is_file() and _is_safetensors(path)):
        import torch

        from ..torch_impl import pretrained

        config, tensors = pretrained.read(path)
        return config, {k: t.to(torch.float64).numpy() for k, t in tensors.items()}
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected a file or a directory, got {str(path)!r}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "__config__" not in npz.files:
                raise ValueError(f"checkpoint {str(path)!r}: expected a '__config__' JSON entry beside the arrays")
            config = config_from_json(str(npz["__config__"]))
            params = {k: npz[k].astype(np.float64) for k in npz.files if k != "__config__"}
    else:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or "config" not in data or "state_dict" not in data:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"checkpoint {str(path)!r}: expected a dict with 'config' and 'state_dict' "
                             f"(the .pt format of earlier versions), got {got}")
        config = config_from_json(json.dumps(data["config"]))
        params = {k: v.detach().to(torch.float64).numpy() for k, v in data["state_dict"].items()}
    _check_arrays(path, config, params)
    return config, params


def _check_arrays(path: Path, config, params: dict) -> None:
    """The tensors of a legacy checkpoint against its config: one line naming the tensor and both shapes."""
    import torch

    from ..torch_impl.pretrained import check_tensors

    check_tensors(f"checkpoint {str(path)!r}", config, {k: torch.from_numpy(v) for k, v in params.items()})


def params_from_onnx(path) -> tuple:
    """(config, reference-layout float64 params) read back from an exported file's initializers."""
    import onnx
    from onnx import numpy_helper

    from ..reference import param_shapes
    from ..reference.io_spec import METADATA_KEYS

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEYS["config"] not in meta:
        raise ValueError(f"model {str(path)!r}: expected an Infini-attention export (no config in its metadata)")
    config = config_from_json(meta[METADATA_KEYS["config"]])
    aliases = json.loads(meta.get(METADATA_KEYS["aliases"], "{}"))
    inits = {i.name: i for i in model.graph.initializer}
    shapes = param_shapes(config)
    missing = [n for n in shapes if aliases.get(n, n) not in inits]
    if missing:
        raise ValueError(f"model {str(path)!r}: expected initializers for every parameter, missing {missing[:5]}")
    return config, {n: numpy_helper.to_array(inits[aliases.get(n, n)]).astype(np.float64) for n in shapes}

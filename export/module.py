"""`infini export --module PKG.MOD:BUILD [--checkpoint W.safetensors]`: a user's model, built by their code.

``BUILD`` is a callable of no arguments returning the model (an ``nn.Module`` of the streaming protocol,
``torch_impl/protocol.py``), or the module object itself. ``PKG.MOD`` is imported from the installed packages
or, as ``python -m`` would find it, from the working directory; or it is a path to a ``.py`` file.
`load_weights` copies a safetensors file of the model's own ``state_dict`` names into it (``safetensors.torch.save_model(model, path)`` writes one; tied weights are
stored once). Every failure is one line naming the option, what was expected and what came.
"""
from __future__ import annotations

import os
import sys

from ..reference.errors import UsageError


def build_model(spec: str):
    """The model ``spec`` (``module:attribute``) builds; UsageError naming what is missing."""
    import torch.nn as nn

    where = f"--module {spec!r}"
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"--module: expected MODULE:ATTRIBUTE (e.g. my_pkg.models:build), got {spec!r}")
    try:
        obj = _import_file(mod_name) if mod_name.endswith(".py") else _import(mod_name)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise UsageError(f"{where}: expected an importable module, cannot import {mod_name!r} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise UsageError(f"{where}: importing {mod_name!r} raised {type(exc).__name__}: {_first(exc)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{where}: expected {mod_name!r} to define {attr!r}, it has no attribute {part!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise UsageError(f"{where}: expected a callable returning the model (or the model), got {type(obj).__name__}")
    try:
        model = obj()
    except Exception as exc:  # noqa: BLE001 - the user's builder
        raise UsageError(f"{where}: {attr}() raised {type(exc).__name__}: {_first(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{where}: expected {attr}() to return a torch.nn.Module, got {type(model).__name__}")
    return model


def load_weights(model, path, option: str = "--checkpoint") -> None:
    """Copy the tensors of the safetensors file ``path`` into ``model`` by its ``state_dict`` names. Every name of
    the model must be there (one of a group of tied names is enough), none other, each of its shape; nothing is
    copied unless all are. ValueError naming the file and the tensor."""
    import torch

    from ..torch_impl.pretrained import read_file

    _, tensors = read_file(path)  # a corrupt or truncated file: one line naming it
    where = f"{option} {str(path)!r}"
    state = model.state_dict()
    tied: dict = {}
    for name, t in state.items():
        tied.setdefault((t.data_ptr(), tuple(t.shape), t.dtype), []).append(name)
    missing = [names[0] for names in tied.values() if not any(n in tensors for n in names)]
    unexpected = sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise ValueError(f"{where}: expected the model's {len(state)} state_dict tensors, missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(state[name].shape):
            raise ValueError(f"{where}: tensor {name!r}: expected shape {tuple(state[name].shape)}, got "
                             f"{tuple(t.shape)}")
        if t.is_floating_point() != state[name].is_floating_point():
            raise ValueError(f"{where}: tensor {name!r}: expected dtype {state[name].dtype}, got {t.dtype}")
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t)  # state_dict tensors share the parameters' storage


def _import(name: str):
    """importlib.import_module, and where the top-level package is not installed, found in the working directory
    (as ``python -m`` finds it) without changing the import path."""
    import importlib.machinery
    import importlib.util

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()]) if exc.name == top else None
        if spec is None:
            raise
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    spec.loader.exec_module(module)
    return importlib.import_module(name)


def _import_file(path: str):
    """The module of a ``.py`` file (``--module path/to/models.py:build``), under its file's stem."""
    import importlib.util
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file {path!r}")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]

"""safetensors checkpoints in the Hugging Face layout: ``DIR/config.json`` + ``DIR/model.safetensors``.

Tensor names are the reference names (SPEC.md §3.1, §9), which are the modules' parameter names, in
the module's dtype. The config is in ``config.json`` (the config's ``to_dict()`` plus ``architectures``,
``model_type`` and ``infini_attention_format``) and again in the safetensors metadata
(``infini_attention_config``), so a lone ``.safetensors`` file describes itself.

Every check (config, tensor names, shapes, dtypes, finiteness) runs before anything is written, and
files are written to a temp name and renamed: a failed save leaves nothing behind. Bad input is one
``ValueError`` line naming the file, the tensor, what was expected and what came.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import torch

from infini_attention.reference import param_shapes
from infini_attention.reference.config import config_from_dict

FORMAT = "infini-attention-checkpoint/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
META_CONFIG, META_FORMAT = "infini_attention_config", "infini_attention_format"
ARCHITECTURES = {"lm": "InfiniTransformerLM", "layer": "InfiniAttention"}
_EXTRA_KEYS = ("architectures", "model_type", META_FORMAT)  # config.json keys beside the config's own fields


def _safetensors():
    try:
        import safetensors.torch  # noqa: F401
        from safetensors import safe_open
    except ImportError as exc:
        raise ImportError("safetensors checkpoints need the 'safetensors' package: pip install safetensors "
                          f"(or the 'hf' extra) ({exc})") from None
    return safetensors.torch, safe_open


def check_tensors(where: str, config, tensors: dict) -> None:
    """Names, shapes and dtypes of ``tensors`` against ``param_shapes(config)``; values finite. One line each."""
    shapes = param_shapes(config)
    missing, extra = [n for n in shapes if n not in tensors], sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise ValueError(f"{where}: expected the {len(shapes)} tensors of the config, missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{where}: tensor {name!r}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{where}: tensor {name!r}: expected a floating-point dtype, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: tensor {name!r}: expected finite values, got {bad} NaN/Inf entries")


def config_json(config) -> dict:
    """The config.json of ``config``: its fields plus the keys Hugging Face tools read."""
    return {"architectures": [ARCHITECTURES[config.kind]], "model_type": "infini_attention", META_FORMAT: FORMAT,
            **config.to_dict()}


def parse_config(where: str, data) -> object:
    """An LMConfig / InfiniConfig from a config.json dict (config_json's output); one-line errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of config fields, got {type(data).__name__}")
    if data.get(META_FORMAT) != FORMAT:
        hint = (f"model_type {data['model_type']!r}: for a Hugging Face model use torch_impl.hf.from_hf"
                if "model_type" in data and data.get("model_type") != "infini_attention" else
                f"{META_FORMAT}={data.get(META_FORMAT)!r}")
        raise ValueError(f"{where}: expected an Infini-attention config ({META_FORMAT} {FORMAT!r}, written by "
                         f"save_pretrained), got {hint}")
    fields = {k: v for k, v in data.items() if k not in _EXTRA_KEYS}
    try:
        return config_from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


@functools.cache
def _file_mode() -> int:
    """What ``open()`` would give a new file: 0666 less the umask (read once: reading it means setting it)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp (and safetensors) make 0600; a saved model is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _prepare(config, tensors: dict, where: str) -> dict:
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
    check_tensors(where, config, tensors)
    return {n: tensors[n] for n in param_shapes(config)}  # canonical order


def write_file(path, config, tensors: dict) -> Path:
    """One self-describing ``.safetensors`` file (the config in its metadata)."""
    st, _ = _safetensors()
    path = Path(path)
    tensors = _prepare(config, tensors, f"checkpoint {str(path)!r}")
    meta = {"format": "pt", META_FORMAT: FORMAT, META_CONFIG: json.dumps(config.to_dict())}

    def write(tmp):
        st.save_file(tensors, tmp, metadata=meta)
        _sort_header(tmp)

    _atomic_write(path, write)
    return path


def _sort_header(path) -> None:
    """Rewrite a safetensors header with sorted keys, in place: safetensors writes ``__metadata__`` in
    hash-map order (safetensors issue #584), so two saves of the same weights would differ in bytes.
    The sorted header has the same entries, so the same length; it is padded with spaces (valid JSON
    whitespace, as safetensors pads) to exactly the old length, and the data offsets do not move."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # not expected (the same JSON, reordered); keep safetensors' bytes then
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def save_dir(directory, config, tensors: dict) -> Path:
    """``directory``/config.json + model.safetensors (created if needed; other files left alone)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"save_pretrained: expected a directory, got the file {str(directory)!r}")
    _prepare(config, tensors, f"checkpoint {str(directory)!r}")  # every check before anything is created
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / WEIGHTS_NAME, config, tensors)
    text = json.dumps(config_json(config), indent=2) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_file(path) -> tuple[object | None, dict[str, torch.Tensor]]:
    """(config from the metadata or None, tensors) of one safetensors file; a corrupt file is one line."""
    _, safe_open = _safetensors()
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError and friends
        text = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(f"{where}: expected a safetensors file, cannot read it (corrupt or truncated: "
                         f"{type(exc).__name__}: {text})") from None
    config = None
    if META_CONFIG in meta:
        try:
            data = json.loads(meta[META_CONFIG])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: expected JSON in the metadata entry {META_CONFIG!r}, got {exc}") from None
        config = parse_config(f"{where} metadata", {**data, META_FORMAT: meta.get(META_FORMAT)})
    return config, tensors


def read(path) -> tuple[object, dict[str, torch.Tensor]]:
    """(config, checked tensors) from a save_pretrained directory or a self-describing .safetensors file."""
    path = Path(path)
    if path.is_dir():
        cfg_path, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for need in (cfg_path, weights):
            if not need.is_file():
                raise ValueError(f"checkpoint {str(path)!r}: expected a directory with {CONFIG_NAME} and "
                                 f"{WEIGHTS_NAME} (save_pretrained), missing {need.name}")
        try:
            data = json.loads(cfg_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"checkpoint {str(cfg_path)!r}: expected JSON, got {exc}") from None
        config = parse_config(f"checkpoint {str(cfg_path)!r}", data)
        meta_config, tensors = read_file(weights)
        if meta_config is not None and meta_config != config:
            diff = sorted(k for k, v in config.to_dict().items() if meta_config.to_dict().get(k) != v)
            raise ValueError(f"checkpoint {str(path)!r}: expected {CONFIG_NAME} and the {WEIGHTS_NAME} metadata to "
                             f"hold one config, got different {diff}")
        where = f"checkpoint {str(weights)!r}"
    elif path.is_file():
        config, tensors = read_file(path)
        side = path.parent / CONFIG_NAME
        if config is None and side.is_file():
            config = parse_config(f"checkpoint {str(side)!r}", json.loads(side.read_text()))
        if config is None:
            raise ValueError(f"checkpoint {str(path)!r}: expected the config in the metadata entry {META_CONFIG!r} "
                             f"or a {CONFIG_NAME} beside it, found neither")
        where = f"checkpoint {str(path)!r}"
    else:
        raise FileNotFoundError(f"checkpoint: expected a directory or a .safetensors file, got {str(path)!r} "
                                "(no such file or directory)")
    check_tensors(where, config, tensors)
    return config, tensors


def save_pretrained(module, directory) -> Path:
    """``module``'s config and parameters (reference names, its dtype) -> ``directory`` (save_dir)."""
    return save_dir(directory, module.config, dict(module.named_parameters()))


def from_pretrained(cls, path, *, dtype: torch.dtype | None = None, device=None, **kw):
    """A ``cls`` (InfiniAttention / InfiniTransformerLM) holding the checkpoint at ``path`` (read).

    dtype None: the stored dtype when all tensors share one, else float32. ``kw`` go to ``cls``."""
    from .lm import InfiniTransformerLM

    config, tensors = read(path)
    kind = "lm" if issubclass(cls, InfiniTransformerLM) else "layer"
    if config.kind != kind:
        raise ValueError(f"checkpoint {str(path)!r}: expected a {kind} checkpoint ({cls.__name__}), got kind "
                         f"{config.kind!r} (load it with {ARCHITECTURES[config.kind]}.from_pretrained)")
    stored = {t.dtype for t in tensors.values()}
    dtype = dtype or (stored.pop() if len(stored) == 1 else torch.float32)
    model = cls(config, dtype=dtype, device=device, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))
    return model

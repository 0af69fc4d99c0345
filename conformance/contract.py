"""The adapter contract a third party writes, and the loader behind ``--impl`` (README, "Plugging in").

An implementation is a factory ``make(config)`` (optionally ``make(config, dtype="float32")``)
returning an object with

    capabilities = {"delta", "gqa", "rope", "chunked", "float32", "canonical_state", "grad"}
    def forward(self, params, x, state=None) -> (y, new_state)
    def grad(self, params, x, dy) -> {"x": ..., "wq": ..., ...}      # only with "grad"

``params`` is a dict of NumPy arrays by SPEC.md §3.1's names, ``x`` a NumPy array (B, T, D), and
``state`` whatever the previous call returned (None starts a stream, SPEC.md §4.2). Arrays are
handed over in the checked dtype (float32 arrays holding bfloat16-rounded values for
"bfloat16"). With "canonical_state", ``new_state`` exposes ``M`` (B, Hkv, dk, dv) and ``z``
(B, Hkv, dk) as attributes or keys. ``grad`` returns the gradients of ``sum(y * dy)`` for one
call from a fresh state (SPEC.md §11). Raising :class:`NotSupported` (from ``make`` or
``forward``) marks a config as unsupported: never a failure.

``whole_stream``: an implementation without a streaming API. ``forward`` is then always called with
``state=None`` and the whole stream so far (the suite replays the history itself and keeps the new
positions' outputs); the state properties are "not applicable", every output is still checked.

Optional declarations on the factory or the class: ``capabilities`` (read from the factory
first, else from an instance), ``config_pins`` (what the implementation hard-codes, drawn so, never
refused) and ``fixed_config`` (an implementation that exists for one config only, e.g. an ONNX file).
Pins: ``rope_theta`` (RoPE always on with this theta), ``rope: True`` (RoPE always on, any theta),
``rope_style``, ``eps``, ``update``, ``gate_on``, ``first_segment``, ``d_value: "d_key"``,
``d_model: "heads"`` (d_model = n_heads * d_key), and ``shared_gate: True`` (one gate for all heads:
every drawn beta has equal entries; reported as a deviation from SPEC.md §8.1, never hidden).
"""
from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..reference import InfiniConfig
from ..reference.errors import UsageError  # defined with the CLI's error policy; importable from here too

DTYPES = ("float64", "float32", "bfloat16", "float16")
FEATURES = ("delta", "gqa", "rope", "chunked", "canonical_state", "grad", "whole_stream")
KNOWN_CAPABILITIES = frozenset(FEATURES + DTYPES)
PIN_FIELDS = ("rope_theta", "rope", "rope_style", "eps", "d_value", "d_model", "update", "gate_on", "first_segment",
              "shared_gate")
PIN_VALUES = {"d_value": ("d_key",), "d_model": ("heads",), "rope": (True,), "shared_gate": (True,)}
# What each declared deviation departs from (reported, never hidden).
DEVIATIONS = {"shared_gate": ("§8.1", "one gate shared by all heads (SPEC.md §8.1 gives each head its own beta_h); "
                                      "drawn betas are equal across heads, per-head gating is not checked")}
# Optional dependencies -> the extra that brings them (pip install 'infini-attention[EXTRA]').
EXTRAS = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
          "infini_transformer_pytorch": "thirdparty"}

IMPL_HELP = ("expected 'package.module:factory' (an importable module and a callable in it, e.g. "
             "'my_pkg.infini_adapter:make'), a path to an .onnx file, or a directory of outputs "
             "written from the golden vectors")


class NotSupported(Exception):
    """Raised by an implementation for a config (or dtype) it does not support: reported, never a failure."""


class MissingDependency(ImportError, UsageError):
    """An optional dependency is not installed: one line naming it and the extra to install (exit 2)."""


def install_hint(module: str) -> str:
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install 'infini-attention[{extra}]'" if extra else f"pip install {top}"


def require(module: str, what: str):
    """Import an optional dependency for ``what``; MissingDependency naming the extra when it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{what} need {module.split('.')[0]}, which cannot be imported ({exc}); install it "
                                f"with {install_hint(module)}") from None


@dataclass
class Implementation:
    """A loaded ``--impl``: the factory plus what it declared."""

    spec: str
    factory: Callable[..., Any] | None
    capabilities: frozenset = frozenset()
    pins: dict = field(default_factory=dict)
    fixed_config: InfiniConfig | None = None
    outputs_dir: str | None = None  # a directory of golden-vector outputs (graded by `vectors check`)
    takes_dtype: bool = False

    def make(self, config: InfiniConfig, dtype: str):
        """A fresh instance for one stream; NotSupported when the dtype was not declared."""
        if dtype not in self.capabilities:
            raise NotSupported(f"dtype {dtype} not declared in capabilities")
        return self.factory(config, dtype=dtype) if self.takes_dtype else self.factory(config)

    def describe(self) -> str:
        caps = ", ".join(sorted(self.capabilities)) or "none"
        pins = ", ".join(f"{k}={v!r}" for k, v in sorted(self.pins.items()))
        return f"{self.spec} [capabilities: {caps}]" + (f" [pins: {pins}]" if pins else "")

    def deviations(self) -> list[tuple[str, str, str]]:
        """(pin, SPEC.md section, what) for every declared deviation from the spec."""
        return [(k, *DEVIATIONS[k]) for k in sorted(self.pins) if k in DEVIATIONS]


def load_impl(spec: str) -> Implementation:
    """Resolve ``--impl``; every problem is a UsageError that says what to fix."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--impl: {IMPL_HELP}; got {spec!r}")
    if spec.endswith(".onnx"):
        if not os.path.isfile(spec):
            raise UsageError(f"--impl: ONNX file {spec!r} does not exist")
        from .adapters import onnx as onnx_adapter
        return from_factory(spec, onnx_adapter.factory_for(spec))
    if os.path.isdir(spec):
        return Implementation(spec, None, outputs_dir=spec)
    if ":" not in spec:
        raise UsageError(f"--impl: {IMPL_HELP}; got {spec!r} (no ':' and not an existing file or directory)")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except MissingDependency as exc:  # a module of ours that needs an extra: already says which
        raise MissingDependency(f"--impl {spec}: {exc}") from None
    except ImportError as exc:
        top = (exc.name or "").split(".")[0]
        if top in EXTRAS:
            raise MissingDependency(f"--impl {spec}: the module needs {top}, which cannot be imported ({exc}); "
                                    f"install it with {install_hint(top)}") from None
        raise UsageError(f"--impl: cannot import module {module_name!r} ({type(exc).__name__}: {exc}). "
                         f"Is it installed or on PYTHONPATH? {IMPL_HELP}") from None
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise UsageError(f"--impl: cannot import module {module_name!r} ({type(exc).__name__}: {exc}). "
                         f"Is it installed or on PYTHONPATH? {IMPL_HELP}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise UsageError(f"--impl: module {module_name!r} has no callable {attr!r}; its callables: "
                         f"{', '.join(names[:12]) or 'none'}")
    return from_factory(spec, factory)


def from_forward(forward: Callable, capabilities, name: str = "forward", **attrs) -> Implementation:
    """An Implementation from one function ``forward(self, params, x, state=None) -> (y, state)``, where
    ``self.config`` is the drawn config: the shortest way to check a function (the suite's own tests build
    their broken implementations so). ``attrs`` become class attributes (e.g. ``config_pins``)."""
    cls = type(name, (), {"capabilities": set(capabilities), "forward": forward, **attrs})

    def make(config):
        obj = cls()
        obj.config = config
        return obj
    make.capabilities = set(capabilities)
    return from_factory(name, make)


def from_factory(spec: str, factory: Callable) -> Implementation:
    """An Implementation from a factory object (what ``load_impl`` does after the import)."""
    takes_dtype = _accepts_dtype(factory)
    caps = getattr(factory, "capabilities", None)
    pins = getattr(factory, "config_pins", None)
    fixed = getattr(factory, "fixed_config", None)
    if caps is None:
        instance = _probe(spec, factory, takes_dtype, fixed)
        caps = getattr(instance, "capabilities", None)
        pins = pins if pins is not None else getattr(instance, "config_pins", None)
    if caps is None or isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
        raise UsageError(f"--impl {spec}: the implementation declares no `capabilities` set of strings; add e.g. "
                         f"capabilities = {{'float32', 'chunked'}} to its class (known: {sorted(KNOWN_CAPABILITIES)})")
    unknown = sorted(set(caps) - KNOWN_CAPABILITIES)
    if unknown:
        raise UsageError(f"--impl {spec}: unknown capabilities {unknown}; known: {sorted(KNOWN_CAPABILITIES)}")
    pins = dict(pins or {})
    bad = sorted(set(pins) - set(PIN_FIELDS))
    bad += [k for k, allowed in PIN_VALUES.items() if k in pins and pins[k] not in allowed]
    if bad:
        allowed = ", ".join(f"{k} only as {v[0]!r}" for k, v in PIN_VALUES.items())
        raise UsageError(f"--impl {spec}: config_pins may only fix {list(PIN_FIELDS)} ({allowed}); got {pins} "
                         f"(bad: {bad})")
    if "whole_stream" in caps and {"chunked", "canonical_state"} & set(caps):
        raise UsageError(f"--impl {spec}: 'whole_stream' (no streaming API: the suite replays the history) "
                         f"excludes 'chunked' and 'canonical_state'; got {sorted(caps)}")
    if fixed is not None and not isinstance(fixed, InfiniConfig):
        raise UsageError(f"--impl {spec}: fixed_config must be an InfiniConfig, got {type(fixed).__name__}")
    return Implementation(spec, factory, frozenset(caps), pins, fixed, takes_dtype=takes_dtype)


def _accepts_dtype(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "dtype" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


PROBE_CONFIGS = (
    InfiniConfig(d_model=4, n_heads=2, n_kv_heads=2, d_key=2, d_value=2, segment_len=2),
    InfiniConfig(d_model=4, n_heads=2, n_kv_heads=2, d_key=2, d_value=2, segment_len=2, rope_theta=10000.0,
                 rope_style="interleaved"),
    InfiniConfig(d_model=4, n_heads=2, n_kv_heads=2, d_key=2, d_value=2, segment_len=2, rope_theta=10000.0),
)


def _probe(spec: str, factory: Callable, takes_dtype: bool, fixed: InfiniConfig | None):
    """Build one instance to read its declarations (when the factory declares none itself)."""
    errors = []
    for config in ([fixed] if fixed is not None else PROBE_CONFIGS):
        for dtype in DTYPES[:2]:
            try:
                return factory(config, dtype=dtype) if takes_dtype else factory(config)
            except NotSupported as exc:
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001
                raise UsageError(f"--impl {spec}: calling the factory raised {type(exc).__name__}: {exc}; declare "
                                 f"`capabilities` on the factory to skip this probe") from None
    raise UsageError(f"--impl {spec}: the factory refused every probe config ({'; '.join(errors[:2])}); declare "
                     f"`capabilities` (and `config_pins`) on the factory itself")

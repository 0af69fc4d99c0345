"""What a property is, and the context it draws, runs and compares with (SPEC.md §11).

A property is a function ``fn(check)`` registered with :func:`prop`; its docstring cites the
SPEC.md rule it decides. ``check`` draws a config and a stream (honouring the
implementation's capabilities and pins and the declared profile), runs the implementation
and the reference, and compares with the tolerance table. Every draw is recorded so that a
failure can be printed as a case and as Python that reproduces it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import strategies as S
from .. import transforms
from ..contract import Implementation
from ..harness import Failure, Run, Unsupported, run_impl, run_reference
from ...reference import DEFAULT_PROFILE
from ...reference.tolerances import GRAD_TOLERANCES, OUTPUT_TOLERANCES, STATE_TOLERANCES, compare, tolerance_for

TABLES = {"output": OUTPUT_TOLERANCES, "state": STATE_TOLERANCES, "grad": GRAD_TOLERANCES}


@dataclass(frozen=True)
class Property:
    name: str
    spec: str  # the SPEC.md sections it decides
    fn: Callable
    requires: frozenset  # capabilities without which it is "not supported"
    budget: float  # fraction of --max-examples it draws (long streams draw fewer)
    not_for: frozenset = frozenset()  # capabilities with which it does not apply ("n/a")
    not_for_why: str = ""

    @property
    def doc(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())


PROPERTIES: dict[str, Property] = {}


def prop(name: str, spec: str, requires=(), budget: float = 1.0, not_for=(), not_for_why: str = ""):
    """Register a property under ``name``; it is "not supported" unless the impl declares ``requires``,
    and "n/a" for an impl declaring any of ``not_for`` (``not_for_why`` says why)."""
    def register(fn):
        PROPERTIES[name] = Property(name, spec, fn, frozenset(requires), budget, frozenset(not_for), not_for_why)
        return fn
    return register


STATELESS = ("whole_stream",)
# Repro lines comparing the final canonical state of ``got`` (the implementation) with ``want``.
STATE_LINES = ("if got.states: assert_close(got.states[-1][0], want.states[-1][0], 'state')",
               "if got.states: assert_close(got.states[-1][1], want.states[-1][1], 'state')")
STATELESS_WHY = "it keeps no state between calls: the suite replays the history on every call"


@dataclass
class Settings:
    """How deep to look, at what dtype, under which declared profile (conventions of SPEC.md §8.2)."""

    dtype: str = "float32"
    profile: dict = field(default_factory=lambda: dict(DEFAULT_PROFILE))
    max_examples: int = 20
    seed: int = 0
    thorough: bool = False
    shrink: bool = True
    min_examples: int = 10  # a property that ran fewer is inconclusive, never a pass
    call_timeout: float = 60.0  # seconds per call into the implementation (guard.py); 0: none


@dataclass
class Example:
    """One drawn example, enough to rebuild it: config, seeds, shapes, split and the edits applied."""

    config: object = None
    B: int = 0
    T: int = 0
    split: list = field(default_factory=list)
    param_seed: int | None = None
    x_seed: int | None = None
    edits: list = field(default_factory=list)  # Python lines run on (config, params, x, split, ...)
    checks: list = field(default_factory=list)  # Python lines stating what is compared
    draws: dict = field(default_factory=dict)  # other labelled draws

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict() if self.config is not None else None, "B": self.B, "T": self.T,
                "split": list(self.split), "param_seed": self.param_seed, "x_seed": self.x_seed,
                "edits": list(self.edits), "draws": dict(self.draws)}


class Stats:
    def __init__(self):
        self.tried = 0
        self.rejected = 0
        self.worst = 0.0
        self.worst_what = ""
        self.unsupported_reason = ""
        self.last: Check | None = None
        self.hung = None  # the Hung failure that ended the property
        self.hung_example: Check | None = None
        self.note = ""  # a remark a passing property adds to its verdict line


class Check:
    """The per-example context a property works with."""

    def __init__(self, data, impl: Implementation, settings: Settings, stats: Stats):
        self.data, self.impl, self.settings, self.stats = data, impl, settings, stats
        self.dtype = settings.dtype
        self.example = Example()
        self.ns: dict = {}

    @property
    def caps(self) -> frozenset:
        return self.impl.capabilities

    @property
    def thorough(self) -> bool:
        return self.settings.thorough

    def draw(self, strategy, label: str):
        value = self.data.draw(strategy, label=label)
        self.example.draws[label] = value
        return value

    # -------------------------------------------------------------- drawing a config

    def config(self, one_head: bool = False, **pins):
        """A config honouring capabilities, the impl's config_pins, the profile and ``pins``
        (``configs()`` arguments). Unsatisfiable combinations reject the example. ``one_head`` cuts
        the head layout, GQA and per-head gates away where the config is drawn (not for a fixed one)."""
        caps, ipins = self.caps, self.impl.pins
        forced = dict(self.settings.profile)
        if one_head:
            forced["one_head"] = True
        if "delta" not in caps:
            forced["update"] = "linear"
        if "gqa" not in caps:
            forced["gqa"] = False
        if "rope" not in caps:
            forced["rope"] = False
        forced.update({k: ipins[k] for k in ("rope_theta", "rope_style", "eps", "update") if k in ipins})
        if ipins.get("d_value") == "d_key":
            forced["tie_dims"] = True
        if ipins.get("d_model") == "heads":
            forced["tie_model"] = True
        if forced.get("rope_theta") is not None or ipins.get("rope") is True:
            forced["rope"] = True
        for key, value in pins.items():
            if key in forced and value is not None and forced[key] != value:
                raise Unsupported(f"the property needs {key}={value!r}; this implementation and profile have "
                                  f"{key}={forced[key]!r}")
        merged = {**forced, **{k: v for k, v in pins.items() if v is not None}}
        if self.impl.fixed_config is not None:
            config = self.impl.fixed_config
            _check_fixed(config, merged)
        else:
            config = self.draw(S.configs(**merged), "config")
        self.example.config = config
        return config

    # -------------------------------------------------------------- drawing a stream

    def stream(self, config, min_segments=0, max_segments=4, partial=True, split="any", max_batch=3):
        """Draw a stream (seeds, B, T, split); calls cut mid-segment only with "chunked"."""
        if "chunked" not in self.caps and "whole_stream" not in self.caps:  # a replay can stop anywhere
            partial = False
            split = "aligned" if split in ("any", "multi") else split
        case = self.draw(S.streams(config, min_segments, max_segments, partial, split, max_batch), "stream")
        ex = self.example
        ex.config, ex.B, ex.T, ex.split = config, case.x.shape[0], case.x.shape[1], list(case.split)
        ex.param_seed, ex.x_seed = case.param_seed, case.x_seed
        self.ns = {"np": np, "config": config, "params": {k: v.copy() for k, v in case.params.items()},
                   "x": case.x, "split": list(case.split), "B": ex.B, "T": ex.T,
                   "x_from_seed": S.x_from_seed, "params_from_seed": S.params_from_seed,
                   **{name: getattr(transforms, name) for name in transforms.__all__}}
        if self.shared_gate:
            self.edit("params['beta'][:] = params['beta'][0]  # one gate for all heads (declared shared_gate)")
        return case

    @property
    def shared_gate(self) -> bool:
        return self.impl.pins.get("shared_gate") is True

    def edit(self, code: str) -> None:
        """Run one line of Python on the example (params, x, split, ...) and keep it for the repro."""
        exec(code, self.ns)  # noqa: S102 - the suite's own literal lines
        self.example.edits.append(code)

    def explain(self, *lines: str) -> None:
        """Python lines (using ``run`` and ``ref``) saying what is compared, for the repro."""
        self.example.checks.extend(lines)

    # -------------------------------------------------------------- running

    def impl_run(self, params=None, x=None, split=None, want_state=False, instance=None, config=None) -> Run:
        ns = self.ns
        return run_impl(self.impl, config or ns["config"], ns["params"] if params is None else params,
                        ns["x"] if x is None else x, ns["split"] if split is None else split, self.dtype,
                        want_state=want_state, instance=instance)

    def ref_run(self, params=None, x=None, split=None) -> Run:
        ns = self.ns
        return run_reference(ns["config"], ns["params"] if params is None else params,
                             ns["x"] if x is None else x, ns["split"] if split is None else split, self.dtype)

    def param(self, name: str, value):
        """Put ``value`` into the repro namespace (what ``edit`` lines refer to)."""
        self.ns[name] = value
        return value

    # -------------------------------------------------------------- comparing

    def close(self, what: str, actual, expected, kind: str = "output", hint: str = "", t0: int = 0) -> float:
        """Compare with the dtype's tolerance (``kind`` "output", "state" or "grad"); Failure when out of it."""
        tol = tolerance_for(self.dtype, TABLES[kind])
        a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        result = compare(what, a, e, tol)
        if result.score > self.stats.worst or not self.stats.worst_what:
            self.stats.worst, self.stats.worst_what = max(self.stats.worst, result.score), what
        if not result.ok:
            where = _locate(a, e, self.ns, t0) if a.shape == e.shape and a.ndim == 3 and kind != "grad" else ""
            raise Failure(f"{result.message()} [{self.dtype} {kind} tolerance: atol {tol.atol:g}, rtol "
                          f"{tol.rtol:g}]{where}" + (f"\n  hint: {hint}" if hint else ""), result.score)
        return result.score


def _locate(a: np.ndarray, e: np.ndarray, ns: dict, t0: int = 0) -> str:
    """Where the largest error of a (B, T, D) output (tokens t0.. of the stream) sits: row, token, segment, call."""
    b, t, d = (int(i) for i in np.unravel_index(np.argmax(np.abs(a - e)), a.shape))
    config, split = ns.get("config"), ns.get("split") or []
    t += t0
    if config is None or t0 + a.shape[1] > sum(split):
        return f"; largest at (b, t, d) = ({b}, {t}, {d})"
    N = config.segment_len
    call = int(np.searchsorted(np.cumsum(split), t, side="right"))
    return (f"; largest at batch {b}, token {t} (segment {t // N}, offset {t % N}, call {call + 1} of "
            f"{len(split)}), feature {d}: got {a[b, t - t0, d]:.6g}, expected {e[b, t - t0, d]:.6g}")


def _check_fixed(config, pins: dict) -> None:
    """A fixed-config implementation (an ONNX file) serves a property only if its config fits the pins."""
    want = {
        "gqa": lambda v: (config.n_kv_heads < config.n_heads) == v,
        "rope": lambda v: (config.rope_theta is not None) == v,
        "update": lambda v: config.update == v,
        "gate_on": lambda v: config.gate_on == v,
        "first_segment": lambda v: config.first_segment == v,
        "min_kv_heads": lambda v: config.n_kv_heads >= v,
        "min_head_dim": lambda v: min(config.d_key, config.d_value) >= v,
        "min_segment_len": lambda v: config.segment_len >= v,
    }
    for key, value in pins.items():
        if key in want and value is not None and not want[key](value):
            raise Unsupported(f"the model's fixed config does not have {key}={value!r}")

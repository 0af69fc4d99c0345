"""Run the properties with Hypothesis and turn each into a verdict (pass, FAIL, not supported, ERROR).

A FAIL carries the smallest failing example Hypothesis found (the last one it replays) and
Python that reproduces it; a crash inside the suite itself is an ERROR, never a pass.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, reject, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, Unsatisfiable

from .contract import Implementation
from .harness import Failure, Unsupported
from .properties import PROPERTIES, Check, Property, Settings
from .properties.base import Stats
from .repro import repro_code

PASS, FAIL, UNSUPPORTED, ERROR = "pass", "FAIL", "not supported", "ERROR"


@dataclass
class Result:
    name: str
    spec: str
    verdict: str
    examples: int = 0
    worst: float = 0.0  # largest error seen, in units of the tolerance (<= 1 passes)
    worst_what: str = ""
    message: str = ""
    example: dict | None = None
    repro: str = ""
    seconds: float = 0.0
    doc: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"property": self.name, "spec": self.spec, "verdict": self.verdict, "examples": self.examples,
                "worst_error_vs_tolerance": _finite(self.worst), "worst_quantity": self.worst_what,
                "message": self.message, "example": self.example, "repro": self.repro,
                "seconds": round(self.seconds, 3), "doc": self.doc}


def _finite(x: float):
    return x if x == x and x not in (float("inf"), float("-inf")) else str(x)


def run_property(prop: Property, impl: Implementation, s: Settings) -> Result:
    start = time.perf_counter()
    result = _run(prop, impl, s)
    result.seconds = time.perf_counter() - start
    result.doc = prop.doc
    return result


def _run(prop: Property, impl: Implementation, s: Settings) -> Result:
    missing = sorted(prop.requires - impl.capabilities)
    if missing:
        return Result(prop.name, prop.spec, UNSUPPORTED, message=f"needs capability {', '.join(missing)}")
    if s.dtype not in impl.capabilities:
        return Result(prop.name, prop.spec, UNSUPPORTED, message=f"dtype {s.dtype} not declared")
    stats = Stats()
    n = max(2, round(s.max_examples * prop.budget))
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if s.shrink else [])

    @settings(max_examples=n, database=None, deadline=None, phases=phases, derandomize=False,
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False,
              print_blob=False)
    @seed(s.seed)
    @given(st.data())
    def body(data):
        check = Check(data, impl, s, stats)
        stats.last = check
        stats.tried += 1
        try:
            prop.fn(check)
        except Unsupported as exc:
            stats.tried -= 1
            stats.rejected += 1
            stats.unsupported_reason = str(exc)
            reject()

    def result(verdict, message="", with_example=False):
        r = Result(prop.name, prop.spec, verdict, stats.tried, stats.worst, stats.worst_what, message)
        if with_example and stats.last is not None and stats.last.example.config is not None:
            r.example = stats.last.example.to_dict()
            r.repro = repro_code(stats.last.example, impl.spec, s, prop.name)
        return r

    try:
        body()
    except Unsatisfiable:
        if stats.tried == 0:
            return result(UNSUPPORTED, f"every drawn example was refused ({stats.unsupported_reason})")
        return result(PASS, f"{stats.rejected} examples refused as not supported")
    except Failure as exc:
        stats.worst = max(stats.worst, exc.score)
        return result(FAIL, str(exc), with_example=True)
    except Flaky as exc:
        inner = _first_failure(exc)
        return result(FAIL, "the failure did not reproduce when the same example was run again (the "
                            f"implementation keeps hidden state or is nondeterministic): {inner}", with_example=True)
    except Exception as exc:  # noqa: BLE001 - a bug in the suite or in Hypothesis use
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return result(ERROR, f"the suite itself raised {type(exc).__name__}: {exc}\n{tb}", with_example=True)
    if stats.tried == 0:
        return result(UNSUPPORTED, f"every drawn example was refused ({stats.unsupported_reason})")
    note = f"{stats.rejected} examples refused as not supported" if stats.rejected else ""
    return result(PASS, note)


def _first_failure(exc: BaseException) -> str:
    for sub in getattr(exc, "exceptions", ()) or ():
        if isinstance(sub, Failure):
            return str(sub)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def select(only: list[str] | None) -> list[Property]:
    if not only:
        return list(PROPERTIES.values())
    unknown = [n for n in only if n not in PROPERTIES]
    if unknown:
        from .contract import UsageError
        raise UsageError(f"--only: unknown properties {unknown}; known: {', '.join(PROPERTIES)}")
    return [PROPERTIES[n] for n in only]


def run_suite(impl: Implementation, s: Settings, only: list[str] | None = None, progress=None,
              stop_on_fail: bool = False) -> list[Result]:
    """Run the selected properties in order; ``progress(i, n, prop, result_or_None)`` before and after each."""
    props = select(only)
    results = []
    for i, p in enumerate(props):
        if progress:
            progress(i, len(props), p, None)
        r = run_property(p, impl, s)
        results.append(r)
        if progress:
            progress(i, len(props), p, r)
        if stop_on_fail and r.verdict in (FAIL, ERROR):
            break
    return results


def exit_code(results: list[Result]) -> int:
    """0 when everything supported conforms, 1 when anything fails (or the suite errs)."""
    return 1 if any(r.verdict in (FAIL, ERROR) for r in results) else 0

"""Run the properties with Hypothesis and turn each into a verdict.

Verdicts: pass, FAIL, not supported (a capability or every drawn config refused), n/a (the property
does not apply to this kind of implementation, e.g. state properties of a ``whole_stream`` one),
inconclusive (it ran fewer than ``Settings.min_examples`` examples: never a pass) and ERROR (the
suite itself crashed: never a pass). A FAIL carries the smallest failing example Hypothesis found
(the last one it replays) and Python that reproduces it. A call that hangs fails its property
at once (no shrinking: every later example of that property fails without calling the
implementation again), and the suite goes on with the next property.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, reject, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, Unsatisfiable

from . import guard
from .contract import Implementation
from .harness import Failure, Hung, Unsupported
from .properties import PROPERTIES, Check, Property, Settings
from .properties.base import Stats
from .repro import repro_code

PASS, FAIL, UNSUPPORTED, ERROR = "pass", "FAIL", "not supported", "ERROR"
INCONCLUSIVE, NOT_APPLICABLE = "inconclusive", "n/a"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, UNSUPPORTED, NOT_APPLICABLE, ERROR)

# Exit status of a conformance run (documented in cli.py, README and `infini conformance --help`).
EXIT_CONFORMS, EXIT_FAILS, NOTHING_CHECKED, EXIT_INCONCLUSIVE = 0, 1, 3, 4


class _Stop(BaseException):
    """Ends a Hypothesis run at once (a BaseException: Hypothesis neither catches nor shrinks it)."""


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
    guard.set_call_timeout(s.call_timeout)
    result = _run(prop, impl, s)
    result.seconds = time.perf_counter() - start
    result.doc = prop.doc
    return result


def planned_examples(prop: Property, s: Settings) -> int:
    return max(2, round(s.max_examples * prop.budget))


def required_examples(prop: Property, s: Settings) -> int:
    """Examples a property must run to pass: ``min_examples``, at most what it plans to run."""
    return max(1, min(s.min_examples, planned_examples(prop, s)))


def _run(prop: Property, impl: Implementation, s: Settings) -> Result:
    excluded = sorted(prop.not_for & impl.capabilities)
    if excluded:
        return Result(prop.name, prop.spec, NOT_APPLICABLE,
                      message=f"does not apply to a {', '.join(excluded)} implementation ({prop.not_for_why})")
    missing = sorted(prop.requires - impl.capabilities)
    if missing:
        return Result(prop.name, prop.spec, UNSUPPORTED, message=f"needs capability {', '.join(missing)}")
    if s.dtype not in impl.capabilities:
        return Result(prop.name, prop.spec, UNSUPPORTED, message=f"dtype {s.dtype} not declared")
    stats = Stats()
    n = planned_examples(prop, s)
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
        except Hung as exc:  # a hung call ends the property at once: no replay, no shrinking through hangs
            stats.hung, stats.hung_example = exc, check
            raise _Stop() from None

    def result(verdict, message="", with_example=False):
        r = Result(prop.name, prop.spec, verdict, stats.tried, stats.worst, stats.worst_what, message)
        last = stats.hung_example or stats.last
        if with_example and last is not None and last.example.config is not None:
            r.example = last.example.to_dict()
            r.repro = repro_code(last.example, impl.spec, s, prop.name)
        return r

    def settled(note: str = "") -> Result:
        if stats.tried == 0:
            return result(UNSUPPORTED, f"every drawn example was refused ({stats.unsupported_reason})")
        refused = f"{stats.rejected} examples refused as not supported" if stats.rejected else ""
        need = required_examples(prop, s)
        if stats.tried < need:
            return result(INCONCLUSIVE, f"only {stats.tried} examples ran (at least {need} needed, "
                                        f"--min-examples)" + (f"; {refused}" if refused else ""))
        return result(PASS, "; ".join(x for x in (note, refused) if x))

    try:
        body()
    except _Stop:
        return result(FAIL, str(stats.hung), with_example=True)
    except Unsatisfiable:
        return settled()
    except Failure as exc:
        stats.worst = max(stats.worst, exc.score)
        return result(FAIL, str(exc), with_example=True)
    except Flaky as exc:
        inner = _first_failure(exc)
        return result(FAIL, "the failure did not reproduce when the same example was run again (the "
                            f"implementation keeps hidden state or is nondeterministic): {inner}", with_example=True)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in the suite or in Hypothesis use
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return result(ERROR, f"the suite itself raised {type(exc).__name__}: {exc}\n{tb}", with_example=True)
    return settled(stats.note)


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
    with guard.user_interrupts():
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
    """0 everything applicable and supported conforms; 1 anything fails (or the suite errs); 3 nothing checked
    (no property passed: every one not supported, n/a or inconclusive); 4 something passed, nothing failed,
    but a property was inconclusive (ran fewer than --min-examples examples)."""
    if any(r.verdict in (FAIL, ERROR) for r in results):
        return EXIT_FAILS
    if not any(r.verdict == PASS for r in results):
        return NOTHING_CHECKED
    return EXIT_INCONCLUSIVE if any(r.verdict == INCONCLUSIVE for r in results) else EXIT_CONFORMS

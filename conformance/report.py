"""Reports of a conformance run: the terminal summary table and failure details, JSON, and JUnit XML."""
from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET

from ..reference import SPEC_VERSION
from .runner import (ERROR, EXIT_INCONCLUSIVE, FAIL, INCONCLUSIVE, NOT_APPLICABLE, NOTHING_CHECKED, PASS, UNSUPPORTED,
                     VERDICTS, Result, exit_code)

SUITE_VERSION = "1.0"


def profile_str(settings) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.profile.items())


def header(impl, settings) -> str:
    depth = "thorough" if settings.thorough else "default"
    deviations = "".join(f"\n  declared deviation from SPEC.md {spec} ({pin}): {what}"
                         for pin, spec, what in impl.deviations())
    return (f"Infini-attention conformance {SUITE_VERSION} (SPEC.md {SPEC_VERSION})\n"
            f"  implementation: {impl.describe()}\n"
            f"  profile: {profile_str(settings)}   dtype: {settings.dtype}   depth: {depth}   "
            f"max examples: {settings.max_examples} (at least {settings.min_examples})   seed: {settings.seed}   "
            f"call timeout: {settings.call_timeout:g} s" + deviations)


def progress_line(i: int, n: int, prop, result: Result | None) -> str:
    if result is None:
        return f"[{i + 1:>2}/{n}] {prop.name} ..."
    return (f"[{i + 1:>2}/{n}] {prop.name:<20} {result.verdict:<13} {result.examples:>5} examples  "
            f"{result.seconds:6.2f}s")


def _worst(r: Result) -> str:
    if r.verdict in (UNSUPPORTED, NOT_APPLICABLE) or (r.examples == 0 and r.verdict != FAIL) or (not r.worst_what and r.worst == 0):
        return "-"
    return "inf" if r.worst == float("inf") else f"{r.worst:.3g}x"


def summary_table(results: list[Result]) -> str:
    rows = [("property", "SPEC.md", "verdict", "worst error / tolerance", "examples")]
    rows += [(r.name, r.spec, r.verdict, _worst(r), str(r.examples)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) if i != 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


OVERALL = {0: "CONFORMS", 1: "DOES NOT CONFORM", NOTHING_CHECKED: "NOTHING CHECKED", EXIT_INCONCLUSIVE: "INCONCLUSIVE"}


def verdict_line(results: list[Result], settings) -> str:
    count = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    extra = "".join(f", {count[v]} {label}" for v, label in ((INCONCLUSIVE, "inconclusive"),
                                                            (NOT_APPLICABLE, "not applicable"),
                                                            (ERROR, "suite errors")) if count[v])
    return (f"{OVERALL[exit_code(results)]} under profile {profile_str(settings)} at {settings.dtype}: "
            f"{count[PASS]} passed, {count[FAIL]} failed, {count[UNSUPPORTED]} not supported" + extra)


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        if r.verdict in (FAIL, ERROR):
            out.append(f"== {r.name} ({r.spec}): {r.verdict}\n   rule: {r.doc}\n   {r.message}")
            if r.example:
                ex = r.example
                out.append(f"   smallest failing case: config {ex['config']}\n   B={ex['B']} T={ex['T']} "
                           f"split={ex['split']} param_seed={ex['param_seed']} x_seed={ex['x_seed']}"
                           + (f" draws={_short(ex['draws'])}" if ex.get("draws") else ""))
            if r.repro:
                out.append("   reproduce with:\n" + "\n".join("     " + line for line in r.repro.splitlines()))
        elif r.verdict in (UNSUPPORTED, NOT_APPLICABLE, INCONCLUSIVE):
            out.append(f"-- {r.name}: {r.verdict} ({r.message})")
        elif r.message:
            out.append(f"-- {r.name}: {r.message}")
    return "\n".join(out)


def _short(draws: dict) -> dict:
    return {k: v for k, v in draws.items() if k not in ("config", "stream")}


def to_json(results: list[Result], impl, settings, seconds: float, diagnosis=None) -> dict:
    return {
        "suite_version": SUITE_VERSION, "spec_version": SPEC_VERSION, "implementation": impl.spec,
        "capabilities": sorted(impl.capabilities), "pins": dict(impl.pins), "profile": dict(settings.profile),
        "dtype": settings.dtype, "depth": "thorough" if settings.thorough else "default",
        "max_examples": settings.max_examples, "seed": settings.seed, "seconds": round(seconds, 2),
        "python": platform.python_version(), "exit_code": exit_code(results),
        "verdict": OVERALL[exit_code(results)], "min_examples": settings.min_examples,
        "call_timeout": settings.call_timeout,
        "declared_deviations": [{"pin": p, "spec": sp, "what": w} for p, sp, w in impl.deviations()],
        "summary": {v: sum(r.verdict == v for r in results) for v in VERDICTS},
        "results": [r.to_dict() for r in results],
        "diagnosis": diagnosis.to_dict() if diagnosis is not None else None,
    }


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=repr)
        f.write("\n")


def to_junit(results: list[Result], impl, settings, seconds: float, diagnosis=None) -> str:
    suite = ET.Element("testsuite", name="infini-conformance", tests=str(len(results)),
                       failures=str(sum(r.verdict == FAIL for r in results)),
                       errors=str(sum(r.verdict == ERROR for r in results)),
                       skipped=str(sum(r.verdict in (UNSUPPORTED, NOT_APPLICABLE, INCONCLUSIVE) for r in results)),
                       time=f"{seconds:.3f}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("implementation", impl.spec), ("profile", profile_str(settings)),
                        ("dtype", settings.dtype), ("seed", str(settings.seed)),
                        ("verdict", OVERALL[exit_code(results)])):
        ET.SubElement(props, "property", name=name, value=value)
    for pin, spec, what in impl.deviations():
        ET.SubElement(props, "property", name=f"declared_deviation.{pin}", value=f"SPEC.md {spec}: {what}")
    likely = diagnosis.likely() if diagnosis is not None else []
    for i, cause in enumerate(likely, 1):
        ET.SubElement(props, "property", name=f"diagnosis.{i}", value=f"{cause.id} ({cause.score:.2f})")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"conformance.{settings.dtype}", name=r.name,
                             time=f"{r.seconds:.3f}")
        if r.verdict in (FAIL, ERROR):
            el = ET.SubElement(case, "failure" if r.verdict == FAIL else "error",
                               message=r.message.splitlines()[0][:500] if r.message else r.verdict)
            causes = f"\n\n{diagnosis.text()}" if diagnosis is not None else ""
            el.text = f"{r.spec}: {r.doc}\n{r.message}\n\n{r.repro}{causes}"
        elif r.verdict in (UNSUPPORTED, NOT_APPLICABLE, INCONCLUSIVE):
            ET.SubElement(case, "skipped", message=f"{r.verdict}: {r.message}")
    if diagnosis is not None:
        ET.SubElement(suite, "system-out").text = diagnosis.text()
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"

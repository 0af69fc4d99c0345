"""Reports of a conformance run: the terminal summary table and failure details, JSON, and JUnit XML."""
from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET

from ..reference import SPEC_VERSION
from .runner import ERROR, FAIL, PASS, UNSUPPORTED, Result, exit_code

SUITE_VERSION = "1.0"


def profile_str(settings) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.profile.items())


def header(impl, settings) -> str:
    depth = "thorough" if settings.thorough else "default"
    return (f"Infini-attention conformance {SUITE_VERSION} (SPEC.md {SPEC_VERSION})\n"
            f"  implementation: {impl.describe()}\n"
            f"  profile: {profile_str(settings)}   dtype: {settings.dtype}   depth: {depth}   "
            f"max examples: {settings.max_examples}   seed: {settings.seed}")


def progress_line(i: int, n: int, prop, result: Result | None) -> str:
    if result is None:
        return f"[{i + 1:>2}/{n}] {prop.name} ..."
    return (f"[{i + 1:>2}/{n}] {prop.name:<20} {result.verdict:<13} {result.examples:>5} examples  "
            f"{result.seconds:6.2f}s")


def _worst(r: Result) -> str:
    if r.verdict == UNSUPPORTED or (r.examples == 0 and r.verdict != FAIL) or (not r.worst_what and r.worst == 0):
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


def verdict_line(results: list[Result], settings) -> str:
    count = {v: sum(r.verdict == v for r in results) for v in (PASS, FAIL, UNSUPPORTED, ERROR)}
    overall = "CONFORMS" if exit_code(results) == 0 else "DOES NOT CONFORM"
    return (f"{overall} under profile {profile_str(settings)} at {settings.dtype}: {count[PASS]} passed, "
            f"{count[FAIL]} failed, {count[UNSUPPORTED]} not supported" + (f", {count[ERROR]} suite errors"
                                                                          if count[ERROR] else ""))


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
        elif r.verdict == UNSUPPORTED:
            out.append(f"-- {r.name}: not supported ({r.message})")
        elif r.message:
            out.append(f"-- {r.name}: {r.message}")
    return "\n".join(out)


def _short(draws: dict) -> dict:
    return {k: v for k, v in draws.items() if k not in ("config", "stream")}


def to_json(results: list[Result], impl, settings, seconds: float) -> dict:
    return {
        "suite_version": SUITE_VERSION, "spec_version": SPEC_VERSION, "implementation": impl.spec,
        "capabilities": sorted(impl.capabilities), "pins": dict(impl.pins), "profile": dict(settings.profile),
        "dtype": settings.dtype, "depth": "thorough" if settings.thorough else "default",
        "max_examples": settings.max_examples, "seed": settings.seed, "seconds": round(seconds, 2),
        "python": platform.python_version(), "exit_code": exit_code(results),
        "summary": {v: sum(r.verdict == v for r in results) for v in (PASS, FAIL, UNSUPPORTED, ERROR)},
        "results": [r.to_dict() for r in results],
    }


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=repr)
        f.write("\n")


def to_junit(results: list[Result], impl, settings, seconds: float) -> str:
    suite = ET.Element("testsuite", name="infini-conformance", tests=str(len(results)),
                       failures=str(sum(r.verdict == FAIL for r in results)),
                       errors=str(sum(r.verdict == ERROR for r in results)),
                       skipped=str(sum(r.verdict == UNSUPPORTED for r in results)), time=f"{seconds:.3f}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("implementation", impl.spec), ("profile", profile_str(settings)),
                        ("dtype", settings.dtype), ("seed", str(settings.seed))):
        ET.SubElement(props, "property", name=name, value=value)
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"conformance.{settings.dtype}", name=r.name,
                             time=f"{r.seconds:.3f}")
        if r.verdict in (FAIL, ERROR):
            el = ET.SubElement(case, "failure" if r.verdict == FAIL else "error",
                               message=r.message.splitlines()[0][:500] if r.message else r.verdict)
            el.text = f"{r.spec}: {r.doc}\n{r.message}\n\n{r.repro}"
        elif r.verdict == UNSUPPORTED:
            ET.SubElement(case, "skipped", message=f"not supported: {r.message}")
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"

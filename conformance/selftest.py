"""How sharp the suite is: run every deliberately broken implementation (``mutants``) through it.

``infini selftest`` prints, for each mutant, the properties that reject it; a mutant that no
property rejects is a hole in the suite. The control (no mistake) must pass everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .contract import load_impl
from .mutants import CONTROL, MUTANTS, OBSERVABLE_AT
from .properties import Settings
from .runner import ERROR, FAIL, run_suite


@dataclass
class Catch:
    mutant: str
    mistake: str
    expected: str  # the property meant to name it
    caught_by: list  # every property that rejected it (all of them when full, else the first)
    errors: list  # properties whose run errored (a suite bug)
    dtype: str = "float32"
    results: list = field(default_factory=list, repr=False)  # the runner's Results (their repros)

    @property
    def caught(self) -> bool:
        return bool(self.caught_by)


def catch(mutant: str, settings: Settings, full: bool = True) -> Catch:
    """Run one mutant; with ``full=False`` start with its expected property and stop at the first rejection."""
    impl = load_impl(f"infini_attention.conformance.mutants:{mutant}")
    mistake, expected = MUTANTS.get(mutant, ("no mistake", ""))
    only = None
    if not full and expected:
        from .properties import PROPERTIES
        only = [expected] + [n for n in PROPERTIES if n != expected]
    if mutant in OBSERVABLE_AT:
        settings = replace(settings, dtype=OBSERVABLE_AT[mutant])
    results = run_suite(impl, settings, only=only, stop_on_fail=not full)
    return Catch(mutant, mistake, expected, [r.name for r in results if r.verdict == FAIL],
                 [r.name for r in results if r.verdict == ERROR], settings.dtype, results)


def catch_table(settings: Settings, mutants=None, full: bool = True, progress=None) -> list[Catch]:
    rows = []
    for name in mutants or list(MUTANTS):
        rows.append(catch(name, settings, full))
        if progress:
            progress(rows[-1])
    return rows


def format_table(rows: list[Catch], control_ok: bool | None = None) -> str:
    width = max(len(r.mutant) for r in rows)
    lines = [f"{'mutant':<{width}}  dtype     caught  by (expected property first)"]
    for r in rows:
        by = sorted(r.caught_by, key=lambda n: n != r.expected)
        lines.append(f"{r.mutant:<{width}}  {r.dtype:<8}  {'yes' if r.caught else 'NO ':<6}  {', '.join(by) or '-'}"
                     + (f"  [suite errors: {', '.join(r.errors)}]" if r.errors else ""))
    n = sum(r.caught for r in rows)
    lines.append(f"caught {n} of {len(rows)} broken implementations"
                 + ("" if control_ok is None else f"; control (no mistake) {'passes' if control_ok else 'FAILS'}"))
    return "\n".join(lines)


def control_passes(settings: Settings) -> bool:
    results = run_suite(load_impl(f"infini_attention.conformance.mutants:{CONTROL}"), settings)
    return not any(r.verdict in (FAIL, ERROR) for r in results)

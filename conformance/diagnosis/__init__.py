"""The diagnosis: from the pattern of what failed and from targeted experiments, the likely root causes.

An implementation with several mistakes fails many properties, and a property's verdict alone cannot say
which mistake is behind it. ``diagnose`` runs probes (``probes_gate``, ``probes_memory``): experiments on
the implementation against itself, or fits of variants of the spec (``models``), each on a config that
cuts the other rules away (one head, one row, one call, a gate at a limit, the first segment alone),
and corrected for what an earlier probe established (a swapped gate, a strided head layout). Each probe
gives evidence for deviation classes (``deviations.py``, one mutant each); a class's score is
1 - prod(1 - strength) over its evidence, plus a little when the property that names it failed. Causes
scoring >= 0.5 are *likely*, 0.2-0.5 *possible*. How often every mistake of a combination of 2-4 mutants
is among the likely causes is measured by ``python -m infini_attention.conformance.diagnosis_rate``.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

from ..deviations import DEVIATIONS
from . import probes_gate as G
from . import probes_memory as Mm
from .lab import Inconclusive, Lab

PROBES = (("gate orientation", G.gate_orientation), ("first segment", G.first_segment),
          ("causality", G.causality), ("heads", G.heads), ("stream", Mm.stream),
          ("batch and instance", Mm.batch_and_instance), ("memory path", Mm.memory_fit),
          ("local path", Mm.local_fit), ("gradient through memory", Mm.gradient_memory),
          ("RoPE positions", Mm.rope_positions))
LIKELY, POSSIBLE, PATTERN = 0.5, 0.2, 0.2


@dataclass
class Cause:
    id: str
    score: float
    evidence: list = field(default_factory=list)

    @property
    def likely(self) -> bool:
        return self.score >= LIKELY

    def to_dict(self) -> dict:
        d = DEVIATIONS[self.id]
        return {"cause": self.id, "mistake": d.mistake, "spec": d.spec, "fix": d.fix, "score": round(self.score, 3),
                "likely": self.likely, "evidence": list(self.evidence)}


@dataclass
class Diagnosis:
    causes: list
    notes: list
    deviations: list  # declared deviations (pins): (pin, SPEC section, what)
    unexplained: list  # failed properties no likely cause names
    seconds: float = 0.0

    def likely(self) -> list:
        return [c for c in self.causes if c.likely]

    def to_dict(self) -> dict:
        return {"likely": [c.to_dict() for c in self.causes if c.likely],
                "possible": [c.to_dict() for c in self.causes if not c.likely],
                "declared_deviations": [{"pin": p, "spec": s, "what": w} for p, s, w in self.deviations],
                "unexplained_failures": list(self.unexplained), "notes": list(self.notes),
                "seconds": round(self.seconds, 2)}

    def text(self) -> str:
        lines = ["diagnosis (likely root causes, most likely first):"]
        for i, c in enumerate(self.likely(), 1):
            d = DEVIATIONS[c.id]
            lines.append(f"  {i}. {c.id} ({d.spec}, score {c.score:.2f}): {d.mistake}")
            lines += [f"       evidence: {e}" for e in c.evidence]
            lines.append(f"       fix: {d.fix}")
        if not self.likely():
            lines.append("  no known cause explains the failures")
        possible = [c for c in self.causes if not c.likely]
        if possible:
            lines.append("  possible: " + "; ".join(f"{c.id} ({c.score:.2f})" for c in possible))
        for pin, spec, what in self.deviations:
            lines.append(f"  declared deviation from SPEC.md {spec} ({pin}): {what}")
        if self.unexplained:
            lines.append(f"  failures no likely cause names: {', '.join(self.unexplained)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def diagnose(impl, settings, results=()) -> Diagnosis:
    """Run the probes on ``impl`` and rank the causes; ``results`` (the suite's) add the failure pattern."""
    start = time.perf_counter()
    lab = Lab(impl, settings)
    evidence: dict[str, list] = {}
    for name, probe in PROBES:
        try:
            try:
                found = probe(lab)
            except Inconclusive as exc:
                if lab.small != 2 or "refused" not in str(exc):
                    raise
                lab.small = 4  # a layer that refuses head dim 2: try 4
                found = probe(lab)
        except Inconclusive as exc:
            lab.notes.append(f"{name} probe not run: {exc}")
            continue
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe's own bug must not hide the suite's verdicts
            where = traceback.extract_tb(exc.__traceback__)[-1]
            lab.notes.append(f"{name} probe crashed ({type(exc).__name__}: {exc} at {where.filename}:{where.lineno})")
            continue
        for cls, strength, text in found:
            evidence.setdefault(cls, []).append((strength, f"[{name}] {text}"))
    failed = {r.name for r in results if r.verdict == "FAIL"}
    for cls, dev in DEVIATIONS.items():
        if dev.property in failed and cls in evidence:
            evidence[cls].append((PATTERN, f"property {dev.property}, which names this mistake, failed"))
    causes = []
    for cls, items in evidence.items():
        miss = 1.0
        for strength, _ in items:
            miss *= 1.0 - strength
        causes.append(Cause(cls, 1.0 - miss, [text for _, text in sorted(items, key=lambda i: -i[0])]))
    causes = [c for c in sorted(causes, key=lambda c: -c.score) if c.score >= POSSIBLE]
    unexplained = sorted(failed) if not any(c.likely for c in causes) else []
    worst = [r.worst for r in results if r.verdict == "FAIL"]
    if settings.dtype == "float64" and worst and max(worst) < 1e4:  # float32's rtol is 2e4 x float64's
        lab.notes.append(f"every failure is within {max(worst):.3g}x the float64 tolerance, the size of float32 "
                         f"rounding: something is computed in float32 (RoPE angles or frequencies, a cast); at "
                         f"--dtype float32 it may conform")
    return Diagnosis(causes, lab.notes, impl.deviations(), unexplained, time.perf_counter() - start)

"""How well the diagnosis names several mistakes at once: combinations of 2-4 mutants (``mutants:a+b``).

    python -m infini_attention.conformance.diagnosis_rate [--sizes 2,3,4] [--triples 120] [--quads 60]
        [--max-examples 3] [--seed 0] [--jobs 1] [--json rate.json] [--no-suite]

Every pair of mutants that do not mask each other (``mutants.MASKING``) is run, and a seeded sample of
the triples and quadruples: each combination through the suite (``--max-examples`` per property, no
shrinking: bounded) and then ``diagnose``. A combination counts as diagnosed when every one of its
mistakes is among the *likely* causes; the rate per size is printed with the misses, and the number of
likely causes that were not in the combination (false alarms). Combinations holding
``rope_stream_positions`` run at bfloat16, where it is observable (SPEC.md §11); the others at float32.
Takes minutes: about 4 s per combination on this 2-core machine (``--jobs 2`` halves it).
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time

from .contract import load_impl
from .diagnosis import diagnose
from .mutants import MASKING, MUTANTS, OBSERVABLE_AT
from .properties import Settings
from .runner import run_suite


def combinations(size: int, sample: int | None, seed: int) -> list[tuple]:
    """Mutant combinations of ``size`` without a masking pair; all of them, or a seeded sample."""
    combos = [c for c in itertools.combinations(MUTANTS, size) if not any(pair <= set(c) for pair in MASKING)]
    if sample is not None and sample < len(combos):
        combos = random.Random(seed + size).sample(combos, sample)
    return combos


def measure(combo: tuple, max_examples: int, seed: int, suite: bool) -> dict:
    dtype = next((OBSERVABLE_AT[m] for m in combo if m in OBSERVABLE_AT), "float32")
    settings = Settings(dtype=dtype, max_examples=max_examples, seed=seed, shrink=False, min_examples=1)
    impl = load_impl("infini_attention.conformance.mutants:" + "+".join(combo))
    start = time.perf_counter()
    results = run_suite(impl, settings) if suite else []
    d = diagnose(impl, settings, results)
    likely = [c.id for c in d.likely()]
    return {"combo": list(combo), "dtype": dtype, "likely": likely, "missed": [m for m in combo if m not in likely],
            "false": [c for c in likely if c not in combo], "failed": [r.name for r in results if r.verdict == "FAIL"],
            "seconds": round(time.perf_counter() - start, 2)}


def _work(args):
    return measure(*args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infini_attention.conformance.diagnosis_rate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2,3,4", help="combination sizes (default 2,3,4)")
    p.add_argument("--pairs", type=int, default=None, metavar="N", help="sample N pairs (default: all)")
    p.add_argument("--triples", type=int, default=120, metavar="N", help="sample N triples (default 120)")
    p.add_argument("--quads", type=int, default=60, metavar="N", help="sample N quadruples (default 60)")
    p.add_argument("--max-examples", type=int, default=3, metavar="N", help="examples per property (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-suite", action="store_true", help="probes only (no suite run: no failure pattern)")
    p.add_argument("--json", metavar="FILE", help="write every combination's result")
    args = p.parse_args(argv)
    samples = {2: args.pairs, 3: args.triples, 4: args.quads}
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows, start = [], time.perf_counter()
    for size in sizes:
        combos = combinations(size, samples.get(size), args.seed)
        work = [(c, args.max_examples, args.seed, not args.no_suite) for c in combos]
        if args.jobs > 1:
            import multiprocessing as mp
            with mp.get_context("spawn").Pool(args.jobs) as pool:
                done = pool.map(_work, work, chunksize=2)
        else:
            done = [_work(w) for w in work]
        ok = [r for r in done if not r["missed"]]
        false = sum(len(r["false"]) for r in done)
        print(f"size {size}: {len(ok)}/{len(done)} = {100 * len(ok) / max(1, len(done)):.1f}% with every mistake "
              f"among the likely causes; {false} false likely causes in all "
              f"({'all' if samples.get(size) is None else 'sample of'} {len(done)} combinations)", flush=True)
        for r in done:
            if r["missed"]:
                print(f"   missed {r['missed']} in {'+'.join(r['combo'])} ({r['dtype']}); likely: {r['likely']}")
        rows += done
    print(f"{len(rows)} combinations in {time.perf_counter() - start:.0f} s; command: python -m "
          f"infini_attention.conformance.diagnosis_rate {' '.join(argv if argv is not None else sys.argv[1:])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``infini`` command: ``check``, ``conformance``, ``vectors write|check``, ``selftest``.

Exit status: 0 everything supported conforms, 1 something does not, 2 usage error (bad option,
import path or profile; the message says what to fix). Other packages add subcommands by
providing ``infini_attention.export.cli.register(subparsers)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from .contract import DTYPES, UsageError

TORCH_IMPL = "infini_attention.conformance.adapters.torch_impl:make"
DEFAULT_EXAMPLES, THOROUGH_EXAMPLES = 100, 1000
PROFILE_KEYS = {"gate_on": ("memory", "local"), "first_segment": ("gated", "local_only")}


def parse_profile(text: str | None) -> dict | None:
    """``gate_on=local,first_segment=local_only`` -> dict (SPEC.md §8.2); None when not given."""
    if text is None:
        return None
    profile = {"gate_on": "memory", "first_segment": "gated"}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in PROFILE_KEYS or value not in PROFILE_KEYS[key]:
            choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in PROFILE_KEYS.items())
            raise UsageError(f"--profile: cannot read {item!r}; expected comma-separated KEY=VALUE from: {choices}")
        profile[key] = value
    return profile


def _suite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="conventions the implementation follows (SPEC.md §8.2), e.g. "
                                     "gate_on=local,first_segment=local_only (default gate_on=memory,first_segment=gated)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="dtype to check (default float32, or the one dtype the implementation declares)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help=f"Hypothesis examples per property (default {DEFAULT_EXAMPLES}, thorough {THOROUGH_EXAMPLES})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="Hypothesis seed (default 0)")
    p.add_argument("--thorough", action="store_true", help="go deep: 10x examples, longer streams")
    p.add_argument("--only", metavar="P1,P2", help="run only these properties")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing example, unshrunk")
    p.add_argument("--json", metavar="FILE", help="write a JSON report")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infini", description="Infini-attention: spec conformance, vectors, tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("check", help="conformance of the bundled PyTorch implementation (readable report)")
    _suite_options(p)
    p = sub.add_parser("conformance", help="check any implementation against SPEC.md")
    p.add_argument("--impl", required=True, metavar="IMPL",
                   help="package.module:factory, a model.onnx file, or a directory of golden-vector outputs")
    _suite_options(p)
    p = sub.add_parser("vectors", help="golden vectors: write them, or grade another program's outputs")
    vsub = p.add_subparsers(dest="vectors_command", metavar="ACTION", required=True)
    w = vsub.add_parser("write", help="(re)generate the golden vectors from the reference")
    w.add_argument("dir")
    c = vsub.add_parser("check", help="grade outputs written from the vectors (see FORMAT.md)")
    c.add_argument("dir", help="the vectors directory (manifest.json)")
    c.add_argument("--outputs", required=True, metavar="OUT", help="directory of <case>.json outputs")
    c.add_argument("--dtype", default="float64", choices=DTYPES, help="tolerance row to grade with (default float64)")
    c.add_argument("--json", metavar="FILE", help="write a JSON report")
    p = sub.add_parser("selftest", help="run the deliberately broken implementations: how sharp is the suite")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--max-examples", type=int, default=50, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    try:
        export_cli = importlib.import_module("infini_attention.export.cli")
    except ImportError as exc:
        if exc.name != "infini_attention.export.cli":
            raise
    else:
        export_cli.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on unknown options
    try:
        if args.command in ("check", "conformance"):
            return _conformance(args, TORCH_IMPL if args.command == "check" else args.impl)
        if args.command == "vectors":
            return _vectors(args)
        if args.command == "selftest":
            return _selftest(args)
        if hasattr(args, "func"):  # subcommands registered by other packages
            return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"infini {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


def _conformance(args, impl_spec: str) -> int:
    from .contract import load_impl
    from .properties import Settings

    profile = parse_profile(args.profile)
    impl = load_impl(impl_spec)
    if impl.outputs_dir is not None:
        from . import golden
        return golden.check_command(golden.default_dir(), impl.outputs_dir, args.dtype or "float64", args.json)
    if impl.fixed_config is not None:
        model = {"gate_on": impl.fixed_config.gate_on, "first_segment": impl.fixed_config.first_segment}
        if profile is not None and profile != model:
            raise UsageError(f"--profile {args.profile}: the model's config has "
                             f"gate_on={model['gate_on']},first_segment={model['first_segment']}")
        profile = model
    dtype = args.dtype or default_dtype(impl.capabilities)
    n = args.max_examples if args.max_examples is not None else (THOROUGH_EXAMPLES if args.thorough
                                                                  else DEFAULT_EXAMPLES)
    if n < 1:
        raise UsageError(f"--max-examples: expected an integer >= 1, got {n}")
    settings = Settings(dtype=dtype, profile=profile or {"gate_on": "memory", "first_segment": "gated"},
                        max_examples=n, seed=args.seed, thorough=args.thorough, shrink=not args.no_shrink)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    return run_and_report(impl, settings, only, args.json, args.junit, quiet=args.quiet)


def default_dtype(capabilities) -> str:
    """float32, unless the implementation declares exactly one other dtype (e.g. a float16 ONNX file)."""
    declared = [d for d in DTYPES if d in capabilities]
    return declared[0] if len(declared) == 1 else "float32"


def run_and_report(impl, settings, only=None, json_path=None, junit_path=None, quiet=False, out=None) -> int:
    from . import report
    from .runner import exit_code, run_suite, select

    out = out or sys.stdout
    select(only)  # unknown names are a usage error before anything runs
    print(report.header(impl, settings), file=out, flush=True)
    if settings.dtype not in impl.capabilities:
        print(f"note: the implementation does not declare dtype {settings.dtype}: every property is "
              f"'not supported'", file=out)

    tty = sys.stderr.isatty()

    def progress(i, n, prop, result):
        if quiet:
            return
        if result is None:  # a live "running" line on a terminal, replaced when the property ends
            if tty:
                print(report.progress_line(i, n, prop, None), end="\r", file=sys.stderr, flush=True)
            return
        print(report.progress_line(i, n, prop, result), file=sys.stderr, flush=True)

    start = time.perf_counter()
    results = run_suite(impl, settings, only, progress)
    seconds = time.perf_counter() - start
    print("\n" + report.summary_table(results), file=out)
    text = report.details(results)
    if text:
        print("\n" + text, file=out)
    print(f"\n{report.verdict_line(results, settings)} ({seconds:.1f}s)", file=out, flush=True)
    if json_path:
        report.write_json(json_path, report.to_json(results, impl, settings, seconds))
    if junit_path:
        with open(junit_path, "w") as f:
            f.write(report.to_junit(results, impl, settings, seconds))
    return exit_code(results)


def _vectors(args) -> int:
    from . import golden

    if args.vectors_command == "write":
        paths = golden.write_vectors(args.dir)
        print(f"wrote {len(paths) - 1} cases and manifest.json to {args.dir}")
        return 0
    return golden.check_command(args.dir, args.outputs, args.dtype, args.json)


def _selftest(args) -> int:
    from .properties import Settings
    from .selftest import catch_table, control_passes, format_table

    settings = Settings(dtype=args.dtype, max_examples=args.max_examples, seed=args.seed, shrink=False)
    rows = catch_table(settings, progress=lambda r: print(f"  {r.mutant}: {'caught' if r.caught else 'NOT CAUGHT'}",
                                                          file=sys.stderr, flush=True))
    ok = control_passes(settings)
    print(format_table(rows, ok))
    return 0 if ok and all(r.caught for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``infini check``, ``conformance``, ``vectors write|check``, ``selftest``: the conformance provider of the
``infini`` command (``register``, entry point ``infini_attention.commands`` in pyproject.toml; the one
parser, dispatch and error policy are ``reference/cli.py``).

Exit status: 0 everything supported conforms, 1 something does not, 2 usage error (bad option,
import path or profile; the message says what to fix), 3 nothing checked (no property passed: every
one not supported, not applicable or inconclusive: no vacuous pass), 4 inconclusive (nothing failed,
something passed, but a property ran fewer than --min-examples examples: no pass on thin evidence).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..reference import DEFAULT_PROFILE, PROFILE_CHOICES
from ..reference.cli import main  # noqa: F401 - the console script, importable from here as before
from ..reference.errors import UsageError, check_output_path
from .contract import DTYPES
from .guard import DEFAULT_CALL_TIMEOUT

TORCH_IMPL = "infini_attention.conformance.adapters.torch_impl:make"
DEFAULT_EXAMPLES, THOROUGH_EXAMPLES = 100, 1000
EXIT_HELP = ("exit status: 0 everything the implementation supports conforms, 1 something does not, "
             "2 usage error, 3 nothing checked (no property passed: every one not supported, not applicable or "
             "inconclusive), 4 inconclusive (nothing failed, but a property ran fewer than --min-examples examples)")


def parse_profile(text: str | None, option: str = "--profile") -> dict | None:
    """``gate_on=local,first_segment=local_only`` -> dict (SPEC.md §8.2); None when not given."""
    if text is None:
        return None
    profile = dict(DEFAULT_PROFILE)
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in PROFILE_CHOICES or value not in PROFILE_CHOICES[key]:
            choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in PROFILE_CHOICES.items())
            raise UsageError(f"{option}: cannot read {item!r}; expected comma-separated KEY=VALUE from: {choices}")
        profile[key] = value
    return profile


def resolve_profile(text: str | None, impl, option: str = "--profile") -> dict:
    """The profile to check: a fixed-config implementation's own (``text`` must agree), else ``text``,
    else the spec's default (``reference.DEFAULT_PROFILE``)."""
    profile = parse_profile(text, option)
    if impl.fixed_config is None:
        return profile or dict(DEFAULT_PROFILE)
    model = {key: getattr(impl.fixed_config, key) for key in PROFILE_CHOICES}
    if profile is not None and profile != model:
        got = ",".join(f"{k}={v}" for k, v in model.items())
        raise UsageError(f"{option} {text}: expected the profile of the model's config, which has {got}")
    return model


def resolve_examples(n: int | None, thorough: bool, option: str = "--max-examples") -> int:
    """Hypothesis examples per property: ``n``, or the default (thorough) count."""
    n = n if n is not None else (THOROUGH_EXAMPLES if thorough else DEFAULT_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"{option}: expected an integer >= 1, got {n!r}")
    return n


def _suite_options(p: argparse.ArgumentParser) -> None:
    defaults = ",".join(f"{k}={v}" for k, v in DEFAULT_PROFILE.items())
    p.add_argument("--profile", help="conventions the implementation follows (SPEC.md §8.2), e.g. "
                                     f"gate_on=local,first_segment=local_only (default {defaults})")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="dtype to check (default float32, or the one dtype the implementation declares)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help=f"Hypothesis examples per property (default {DEFAULT_EXAMPLES}, thorough {THOROUGH_EXAMPLES})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="Hypothesis seed (default 0)")
    p.add_argument("--thorough", action="store_true", help="go deep: 10x examples, longer streams")
    p.add_argument("--only", metavar="P1,P2", help="run only these properties")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing example, unshrunk")
    p.add_argument("--min-examples", type=int, default=10, metavar="K",
                   help="a property that ran fewer examples is inconclusive, not passed (default 10)")
    p.add_argument("--call-timeout", type=float, default=DEFAULT_CALL_TIMEOUT, metavar="SECONDS",
                   help=f"time limit of one call into the implementation; a hung call fails its property "
                        f"(default {DEFAULT_CALL_TIMEOUT:g}; 0: none)")
    p.add_argument("--isolate", choices=("process", "none"), default=None,
                   help="run the implementation in a supervised child process, which survives segfaults and "
                        "native hangs (default: process for conformance, none for check)")
    p.add_argument("--no-diagnose", action="store_true", help="no diagnosis of the failures")
    p.add_argument("--json", metavar="FILE", help="write a JSON report")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def register(sub) -> None:
    """Add check, conformance, vectors and selftest; each sets ``func(args) -> exit status``."""
    p = sub.add_parser("check", help="conformance of the bundled PyTorch implementation (readable report)",
                       epilog=EXIT_HELP)
    _suite_options(p)
    p.set_defaults(func=lambda args: _conformance(args, TORCH_IMPL))
    p = sub.add_parser("conformance", help="check any implementation against SPEC.md", epilog=EXIT_HELP)
    p.add_argument("--impl", required=True, metavar="IMPL",
                   help="package.module:factory, a model.onnx file, or a directory of golden-vector outputs")
    _suite_options(p)
    p.set_defaults(func=lambda args: _conformance(args, args.impl))
    p = sub.add_parser("vectors", help="golden vectors: write them, or grade another program's outputs")
    vsub = p.add_subparsers(dest="vectors_command", metavar="ACTION", required=True)
    w = vsub.add_parser("write", help="(re)generate the golden vectors from the reference")
    w.add_argument("dir")
    w.set_defaults(func=_vectors_write)
    c = vsub.add_parser("check", help="grade outputs written from the vectors (see FORMAT.md)")
    c.add_argument("dir", help="the vectors directory (manifest.json)")
    c.add_argument("--outputs", required=True, metavar="OUT", help="directory of <case>.json outputs")
    c.add_argument("--dtype", default="float64", choices=DTYPES, help="tolerance row to grade with (default float64)")
    c.add_argument("--json", metavar="FILE", help="write a JSON report")
    c.set_defaults(func=_vectors_check)
    p = sub.add_parser("selftest", help="run the deliberately broken implementations: how sharp is the suite")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--max-examples", type=int, default=50, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_selftest)


def _check_reports(args) -> None:
    """Report paths are checked before anything runs (a bad path must not cost a whole suite)."""
    for option in ("json", "junit"):
        if getattr(args, option, None):
            check_output_path(f"--{option}", getattr(args, option))


def _conformance(args, impl_spec: str) -> int:
    from .contract import load_impl
    from .properties import Settings

    _check_reports(args)
    parse_profile(args.profile)  # a bad profile is reported before the implementation is loaded
    n = resolve_examples(args.max_examples, args.thorough)
    impl = load_impl(impl_spec)
    if impl.outputs_dir is not None:
        from . import golden
        return golden.check_command(golden.default_dir(), impl.outputs_dir, args.dtype or "float64", args.json)
    settings = Settings(dtype=args.dtype or default_dtype(impl.capabilities),
                        profile=resolve_profile(args.profile, impl), max_examples=n, seed=args.seed,
                        thorough=args.thorough, shrink=not args.no_shrink,
                        min_examples=resolve_examples(args.min_examples, False, "--min-examples"),
                        call_timeout=resolve_timeout(args.call_timeout))
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    isolate = args.isolate or ("none" if impl_spec == TORCH_IMPL else "process")
    return run_and_report(impl, settings, only, args.json, args.junit, quiet=args.quiet, isolate=isolate == "process",
                          diagnose=not args.no_diagnose)


def resolve_timeout(seconds, option: str = "--call-timeout") -> float:
    """Seconds per call: a finite number >= 0 (0: no limit)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        raise UsageError(f"{option}: expected a number of seconds >= 0 (0: no limit), got {seconds!r}")
    return float(seconds)


def default_dtype(capabilities) -> str:
    """float32, unless the implementation declares exactly one other dtype (e.g. a float16 ONNX file)."""
    declared = [d for d in DTYPES if d in capabilities]
    return declared[0] if len(declared) == 1 else "float32"


def run_and_report(impl, settings, only=None, json_path=None, junit_path=None, quiet=False, out=None,
                   isolate: bool = False, diagnose: bool = True) -> int:
    from . import report
    from .runner import FAIL, exit_code, run_suite, select

    out = out or sys.stdout
    props = select(only)  # unknown names are a usage error before anything runs
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
    diagnosis, notes = None, []
    if isolate and impl.factory is not None and _importable(impl.spec):
        from .supervise import run_supervised
        results, diagnosis, notes = run_supervised(impl.spec, settings, props, progress, diagnose)
    else:
        results = run_suite(impl, settings, only, progress)
        if diagnose and any(r.verdict == FAIL for r in results):
            from .diagnosis import diagnose as run_diagnosis
            diagnosis = run_diagnosis(impl, settings, results)
    seconds = time.perf_counter() - start
    print("\n" + report.summary_table(results), file=out)
    text = report.details(results)
    if text:
        print("\n" + text, file=out)
    if diagnosis is not None:
        print("\n" + diagnosis.text(), file=out)
    for note in notes:
        print(f"\nnote: {note}", file=out)
    print(f"\n{report.verdict_line(results, settings)} ({seconds:.1f}s)", file=out, flush=True)
    if json_path:
        report.write_json(json_path, report.to_json(results, impl, settings, seconds, diagnosis))
    if junit_path:
        with open(junit_path, "w") as f:
            f.write(report.to_junit(results, impl, settings, seconds, diagnosis))
    return exit_code(results)


def _importable(spec: str) -> bool:
    """A child process can load it again: ``module:factory`` or an .onnx path (not a factory object)."""
    return spec.endswith(".onnx") or (":" in spec and not spec.startswith("<"))


def _vectors_write(args) -> int:
    from . import golden

    try:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"vectors write DIR: expected a directory that exists or can be created, got "
                         f"{args.dir!r} ({exc.strerror or type(exc).__name__})") from None
    check_output_path("vectors write DIR", Path(args.dir) / "manifest.json")
    paths = golden.write_vectors(args.dir)
    print(f"wrote {len(paths) - 1} cases and manifest.json to {args.dir}")
    return 0


def _vectors_check(args) -> int:
    from . import golden

    _check_reports(args)
    return golden.check_command(args.dir, args.outputs, args.dtype, args.json)


def _selftest(args) -> int:
    from .properties import Settings
    from .selftest import catch_table, control_passes, format_table

    n = resolve_examples(args.max_examples, False)
    settings = Settings(dtype=args.dtype, max_examples=n, seed=args.seed, shrink=False)
    rows = catch_table(settings, progress=lambda r: print(f"  {r.mutant}: {'caught' if r.caught else 'NOT CAUGHT'}",
                                                          file=sys.stderr, flush=True))
    ok = control_passes(settings)
    print(format_table(rows, ok))
    return 0 if ok and all(r.caught for r in rows) else 1

"""The ``infini`` command: one parser, one dispatch path and one error policy for every subcommand.

Subcommands live with their packages and are found through the entry-point group
``infini_attention.commands`` (pyproject.toml): each entry is a ``register(subparsers)`` function
that adds its parsers and sets ``func(args) -> exit status`` on each. Nothing here imports a
provider (nor torch or onnx) statically: a provider that cannot be imported because an optional
dependency is missing leaves the other commands working, and its own say what to install.

Exit status, for every command:

- 0: done; what was checked passed.
- 1: what was checked failed (an export self-check, a conformance FAIL), with its report; or an
  internal error, one line (``--debug`` shows the traceback).
- 2: a usage error: bad option, path or input (``infini CMD: error: ...``, one line); argparse's own too.
- 3: ``infini check`` / ``infini conformance``: nothing was checked (every property not supported,
  not applicable or inconclusive): "NOTHING CHECKED".
- 4: ``infini check`` / ``infini conformance``: inconclusive: nothing failed and something passed, but
  a property ran fewer than ``--min-examples`` examples.
- 130: interrupted (Ctrl-C), one line.
- 141: stdout was closed early (output piped to ``head``): nothing more is printed and the status
  is the one of a process killed by SIGPIPE, so a pipeline under ``set -o pipefail`` still sees
  that the command did not finish (a cut-short conformance run must not read as a pass).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from importlib import metadata

from .errors import UsageError

GROUP = "infini_attention.commands"
EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141
USAGE_ERRORS = (UsageError, ValueError, OSError)  # OSError: FileNotFoundError, IsADirectoryError, ENOSPC, ...
# Optional dependencies a command imports when it runs: top-level module -> what to install.
INSTALL = {
    "torch": "torch (pip install torch; the CPU build avoids a multi-GB download, see README)",
    "onnx": "onnx (pip install onnx)",
    "onnxruntime": "onnxruntime (pip install 'infini-attention[ort]')",
    "onnxscript": "onnxscript (pip install 'infini-attention[ort]')",
    "tqdm": "tqdm (pip install tqdm)",
    "hypothesis": "hypothesis (pip install hypothesis)",
    "infini_transformer_pytorch": "infini-transformer-pytorch (pip install 'infini-attention[thirdparty]')",
}
EPILOG = ("exit status: 0 done (what was checked passed), 1 what was checked failed (or an internal error), "
          "2 usage error, 3 nothing checked (conformance), 4 inconclusive (conformance: too few examples), "
          "130 interrupted, 141 output closed early (piped to head). --debug (before or after COMMAND) shows "
          "tracebacks.")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose "invalid choice" error names the commands that could not be loaded."""

    unavailable: dict | None = None

    def error(self, message):
        if self.unavailable and "invalid choice" in message:
            message += "; " + "; ".join(f"commands of {name!r} are unavailable: {why}"
                                        for name, why in self.unavailable.items())
        super().error(message)


def providers() -> list:
    """The entry points of GROUP, one per name (a source checkout's egg-info and the installed
    metadata may both list them), in name order."""
    found = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return [found[name] for name in sorted(found)]


def missing_dependency(exc: BaseException) -> str | None:
    """"needs X ..., install ..." when ``exc`` is the ImportError of an optional dependency, else None."""
    if not isinstance(exc, ImportError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    if top not in INSTALL:
        return None
    return f"this command needs {top}, which cannot be imported ({exc}); install {INSTALL[top]}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infini", epilog=EPILOG,
                     description="Infini-attention: spec conformance, golden vectors, ONNX export and streaming")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.unavailable = {}
    for ep in providers():
        try:
            register = ep.load()
        except ImportError as exc:
            why = missing_dependency(exc)
            if why is None:
                raise
            parser.unavailable[ep.name] = why
            _unavailable(sub, ep.name, why)
            continue
        register(sub)
    for p in list(sub.choices.values()):  # --debug after the command too
        try:
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        except argparse.ArgumentError:
            pass
    return parser


def _unavailable(sub, name: str, why: str) -> None:
    """A placeholder command for a provider that could not be imported: running it says what to install."""
    if name in sub.choices:
        return
    p = sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)

    def func(args):
        raise UsageError(why)
    p.set_defaults(func=func, any_arguments=True)


def main(argv=None) -> int:
    """``infini [--debug] COMMAND ...``: parse, run the command's ``func`` under the error policy."""
    if not providers():
        print(f"infini: error: no commands are installed (entry-point group {GROUP!r} is empty); reinstall the "
              "package, e.g. pip install -e .", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # argparse's own errors exit 2
    if extra and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.error(f"command {args.command!r} set no func(args) to run")
    return run(args)


def run(args) -> int:
    """Run ``args.func(args)``; map what it raises to one line and an exit status (module docstring)."""
    name = f"infini {args.command}"
    debug = bool(getattr(args, "debug", False))
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return int(code or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the one place that turns exceptions into exit codes
        if debug:
            traceback.print_exc()
        missing = missing_dependency(exc)
        if missing is not None:
            print(f"{name}: error: {missing}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, USAGE_ERRORS):
            print(f"{name}: error: {describe(exc)}", file=sys.stderr)
            return EXIT_USAGE
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"{name}: internal error: {type(exc).__name__}: {describe(exc)}{hint}", file=sys.stderr)
        return 1


def describe(exc: BaseException) -> str:
    """The exception's message on one line; an OSError of the system as "reason: 'file'"."""
    if isinstance(exc, OSError) and exc.strerror and (not exc.args or not isinstance(exc.args[0], str)):
        text = exc.strerror + (f": {exc.filename!r}" if exc.filename is not None else "")
        text += f" -> {exc.filename2!r}" if exc.filename2 is not None else ""
    else:
        text = str(exc) or type(exc).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's last flush cannot fail again (as the Python docs on
    SIGPIPE recommend)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())

"""What every package raises for a mistake the user can fix, and the output-path check done before long work.

:class:`UsageError` is the one error class of a bad command line, path or adapter declaration: the
``infini`` command (``reference/cli.py``) prints it as one line and exits 2. ``conformance.contract``
re-exports it under its old name.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class UsageError(Exception):
    """A bad command line, option, path or adapter declaration; the CLI prints it and exits 2."""


def check_output_path(option: str, path) -> Path:
    """``path`` can be written (a file in an existing, writable directory; not a directory, not read-only).

    Probed by creating and removing a temp file beside it, named as `InfiniSession.save_state`
    names its temp files (``<name>.<pid>.*.tmp``), so nothing is left behind even if killed here.
    Returns the path; raises UsageError naming ``option``, what was expected and what came.
    """
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option}: expected a file path, got the directory {str(path)!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"{option}: expected a file in an existing directory, got {str(path)!r} (no directory "
                         f"{str(parent)!r})")
    if not parent.is_dir():
        raise UsageError(f"{option}: expected a file in a directory, got {str(path)!r} ({str(parent)!r} is not a "
                         f"directory)")
    if p.exists():
        mode = p.stat().st_mode
        if not os.access(p, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise UsageError(f"{option}: expected a writable file, got read-only {str(path)!r} "
                             f"(mode {stat.filemode(mode)})")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{p.name}.{os.getpid()}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option}: expected a file in a writable directory, got {str(path)!r} "
                         f"({exc.strerror or type(exc).__name__})") from None
    return p

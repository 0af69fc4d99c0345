"""The state file's atomic write (`InfiniSession.save_state`, `StreamPool.park`): the process's umask, and
removing temp files that a killed earlier save left behind."""
from __future__ import annotations

import glob
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np


def write_state_file(path, arrays: dict, meta: dict) -> Path:
    """Write ``arrays`` and ``meta`` (JSON, under ``__meta__``) as an .npz atomically (a temp file beside it, then
    os.replace): an interrupted save keeps the old file. A symlink is written through (its target is replaced, the
    link stays); an existing file keeps its mode (a new one gets 0o666 & ~umask, as open() gives); temp files that a
    killed earlier save left (``<name>.<pid>.*.tmp`` of a process no longer running) are removed."""
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(f"state file: expected a file path, got the directory {str(path)!r}")
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
    _remove_orphans(target)
    arrays = dict(arrays, __meta__=np.array(json.dumps(meta)))
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Path(path)


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _remove_orphans(target: Path) -> None:
    """Temp files of earlier saves of ``target`` whose process is gone (killed mid-save)."""
    prefix = target.name + "."
    for name in glob.glob(os.path.join(glob.escape(str(target.parent)), glob.escape(prefix) + "*.tmp")):
        pid = os.path.basename(name)[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue  # a save in progress (ours or another process's)
        try:
            os.unlink(name)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True

"""Helpers of `InfiniSession.save_state`'s atomic write (moved out of session.py unchanged): the process's umask,
and removing temp files that a killed earlier save left behind."""
from __future__ import annotations

import glob
import os
from pathlib import Path


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

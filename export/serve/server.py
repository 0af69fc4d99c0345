"""Starting the real ``tritonserver`` that the ``nvidia-pytriton`` wheel ships, on loopback ports.

The Python backend needs ``triton_python_backend_stub`` built for the running Python version, copied from the
wheel's ``python_backend_stubs/<major.minor>/`` beside the backend library: `backend_directory` assembles
such a backends folder in a directory of ours (the installed wheel is never modified).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

from ...reference.errors import UsageError


def triton_root() -> Path:
    """The wheel's tritonserver folder (bin/, backends/, python_backend_stubs/)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # located, not imported: installed --no-deps, its Python API is not
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("serve: expected the nvidia-pytriton wheel (its tritonserver binary): "
                         "pip install --no-deps nvidia-pytriton==0.7.0 (.ci/setup does)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise UsageError(f"serve: expected {root / 'bin' / 'tritonserver'} in the nvidia-pytriton wheel, not found")
    return root


def backend_directory(dest) -> Path:
    """``dest``/python/ holding the Python backend and the stub for this Python version -> ``dest``."""
    root, version = triton_root(), f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UsageError(f"serve: expected a Python backend stub for Python {version} in {root}, found none")
    dest = Path(dest)
    (dest / "python").mkdir(parents=True, exist_ok=True)
    files = {name: root / "backends" / "python" / name for name in ("libtriton_python.so",
                                                                    "triton_python_backend_utils.py")}
    for name, src in {**files, "triton_python_backend_stub": stub}.items():
        tmp = dest / "python" / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(src, tmp)  # then renamed: a stub of an earlier server may still be running from there
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest / "python" / name)
    return dest


def check_port(option: str, port: int) -> int:
    """A loopback TCP port nobody listens on (checked by binding it)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"{option}: expected a port number in [1, 65535], got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"{option}: expected a free port, {port} is in use on 127.0.0.1") from None
    return port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """``tritonserver`` on 127.0.0.1 over ``repository`` (the folder `write_repository` wrote): `start` waits until it is ready (or raises with the log's
    tail), `kill` (SIGKILL, the whole process group) and `stop` (SIGTERM) end it. A context manager."""

    def __init__(self, repository, workdir, http_port: int | None = None, grpc_port: int | None = None):
        self.repository, self.workdir = Path(repository), Path(workdir)
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        self.proc = None
        self.log = self.workdir / f"tritonserver-{self.http_port}.log"

    def command(self) -> list[str]:
        backends = backend_directory(self.workdir / "backends")
        return [str(triton_root() / "bin" / "tritonserver"), f"--model-repository={self.repository / 'models'}",
                f"--backend-directory={backends}", f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--allow-metrics=false",
                "--log-verbose=0", "--exit-on-error=true", "--strict-readiness=true"]

    def start(self, timeout: float = 120.0) -> "TritonServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s: {self.log_tail()}")

    @staticmethod
    def environment() -> dict:
        """The server's environment: the stub copied out of the wheel finds the wheel's bundled libraries (its
        rpath is relative to where the wheel put it), and the stub's Python (the system's libpython) this
        environment's packages (numpy first: the backend's own utilities import it before model.py runs)."""
        libs = str(triton_root().parent.parent / "nvidia_pytriton.libs")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libs, env.get("LD_LIBRARY_PATH")]))
        paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        env["PYTHONPATH"] = ":".join(filter(None, [*paths, env.get("PYTHONPATH")]))
        return env

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 20.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def _signal(self, sig, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stubs = _children(self.proc.pid)  # the Python-backend stubs, which may sit in a group of their own
        try:
            os.killpg(self.proc.pid, sig)  # the server (started in a process group of its own)
        except ProcessLookupError:
            return
        for pid in stubs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc; empty where there is none)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out

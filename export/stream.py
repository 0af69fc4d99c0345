"""Drive a long stream through an InfiniSession: inputs from a file or generated, chunked,
with progress, throughput, memory and optional atomic state checkpoints (used by the CLI,
the demo and benchmarks/bench_onnx.py). Nothing here grows with the stream's length except
one float per chunk of timings.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..reference.errors import UsageError

BLOCK = 65536  # generated inputs are drawn per block of this many tokens: any range is reproducible


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far: VmHWM of its address space (ru_maxrss would
    carry over the parent's peak into a process started by fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Source:
    """Stream inputs by position: ``read(start, stop)`` -> (B, stop-start) ids or (B, stop-start, D) x."""

    def __init__(self, session, length: int, path=None, raw_dtype: str = "uint16", seed: int = 0):
        self.sess, self.seed = session, seed
        self.data = None
        if path is not None:
            self.data = load_token_file(path, raw_dtype)
            if not session.config.takes_tokens:
                raise ValueError(f"tokens file: expected a model that takes token ids (this {session.kind} model takes "
                                 "vectors: generated x)")
            if self.data.ndim == 1:
                self.data = self.data[None]
            if self.data.shape[0] != session.batch:
                raise ValueError(f"tokens file: expected {session.batch} rows (the stream's batch), "
                                 f"got {self.data.shape[0]}")
            length = self.data.shape[1] if length is None else min(length, self.data.shape[1])
        if length is None or length < 0:
            raise ValueError(f"length: expected a number of tokens >= 0, got {length!r}")
        self.length = int(length)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.data is not None:
            return np.asarray(self.data[:, start:stop])
        parts, pos = [], start
        while pos < stop:  # blocks of BLOCK tokens, each from its own seeded generator
            b = pos // BLOCK
            end = min(stop, (b + 1) * BLOCK)
            parts.append(self._block(b)[:, pos - b * BLOCK:end - b * BLOCK])
            pos = end
        return np.concatenate(parts, axis=1) if parts else self._block(0)[:, :0]

    def _block(self, b: int) -> np.ndarray:
        if getattr(self, "_cached", (None,))[0] == b:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, b])
        s = self.sess
        if s.config.takes_tokens:
            block = rng.integers(0, s.config.input_width, (s.batch, BLOCK))
        else:
            block = rng.standard_normal((s.batch, BLOCK, s.config.input_width)).astype(np.float32)
        self._cached = (b, block)
        return block


def load_token_file(path, raw_dtype: str = "uint16") -> np.ndarray:
    """Token ids from .npy (memory-mapped), .txt (whitespace-separated) or raw binary (``raw_dtype``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokens: expected a file of token ids, got {str(path)!r}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
        elif path.suffix == ".txt":
            arr = np.loadtxt(path, dtype=np.int64, ndmin=1)
        else:
            arr = np.memmap(path, dtype=raw_token_dtype(raw_dtype), mode="r")
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"tokens {str(path)!r}: expected token ids as .npy, .txt or raw {raw_dtype}, cannot read "
                         f"the file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens {str(path)!r}: expected integer ids of shape (T,) or (B, T), got {arr.dtype} "
                         f"{arr.shape}")
    return arr


def raw_token_dtype(name: str) -> np.dtype:
    """The element type of a raw tokens file: an integer NumPy dtype (``--raw-dtype``)."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not np.issubdtype(dtype, np.integer):
        raise UsageError(f"--raw-dtype: expected an integer NumPy dtype such as uint16, int32 or int64, got {name!r}")
    return dtype


def available_memory() -> int | None:
    """Bytes this machine can still hand out (MemAvailable), or None where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def bytes_per_row(session, chunk: int | None = None) -> int:
    """A rough upper estimate of the host memory one batch row of a stream takes: the state at its
    largest (N - 1 tokens pending; host copy, ORT's input and output), a block of generated input,
    one call's outputs and one layer's attention scores."""
    from .checks import concrete

    N, config = session.segment_len, session.config
    state = sum(int(np.prod(concrete(s.dims, 1, N - 1))) * np.dtype(s.dtype).itemsize for s in session.state_specs)
    width = max(config.output_width, max(a.d_model for a in config.layer_configs))
    inputs = BLOCK * (8 if config.takes_tokens else 4 * config.input_width)
    call = min(chunk or N, N)
    heads = max(a.n_heads for a in config.layer_configs)
    return 3 * state + inputs + 2 * call * width * 4 + heads * call * N * 4


def open_session(path, provider: str = "auto", batch: int = 1, chunk: int | None = None):
    """An InfiniSession over ``path`` for ``batch`` rows. A file ONNX Runtime cannot load, a provider that
    does not load, or a batch whose stream would not fit in memory is a UsageError naming it."""
    from .session import InfiniSession

    try:
        sess = InfiniSession(path, provider=provider, batch=1)
    except RuntimeError as exc:  # providers.py: "provider 'cuda': ..."
        raise UsageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors (InvalidProtobuf, Fail, ...)
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        raise UsageError(f"model {str(path)!r}: expected an ONNX file written by `infini export`, ONNX Runtime "
                         f"cannot load it ({type(exc).__name__}: {first})") from None
    per_row, free = bytes_per_row(sess, chunk), available_memory()
    if free is not None and batch * per_row > free:
        raise UsageError(f"--batch: expected a batch whose stream fits in memory (about {per_row / 2**20:.2f} MiB "
                         f"per row, {free / 2**20:,.0f} MiB available: at most {free // per_row:,} rows), got {batch:,}")
    try:
        if batch != 1:
            sess.reset(batch)
    except MemoryError:
        raise UsageError(f"--batch: expected a batch whose state fits in memory, got {batch:,} (MemoryError "
                         "allocating it)") from None
    return sess


@dataclass
class StreamReport:
    tokens: int = 0  # tokens fed in this run (after any resume point)
    seconds: float = 0.0
    chunk_seconds: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)  # dicts: position, rss, peak_rss, seconds
    state_nbytes: int = 0
    saved: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def run_stream(session, source: Source, *, chunk: int | None = None, checkpoint_every: int = BLOCK,
               save_state=None, on_checkpoint=None, progress: bool = True,
               report: StreamReport | None = None) -> StreamReport:
    """Feed ``source`` from ``session.position`` to its end in calls of ``chunk`` tokens (default N).

    Every ``checkpoint_every`` tokens: record memory, save the state atomically to ``save_state``
    (if given) and call ``on_checkpoint(session, position)``. An exception (or Ctrl-C) leaves the
    last saved file as it was; pass ``report`` to read how far it got (``report.saved``) afterwards.
    """
    chunk = session.segment_len if chunk is None else chunk
    for name, value in (("chunk", chunk), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an integer number of tokens >= 1, got {value!r}")
    report = StreamReport() if report is None else report
    bar = _bar(progress, source.length, session.position)
    t_start, next_cp = time.perf_counter(), (session.position // checkpoint_every + 1) * checkpoint_every
    try:
        while session.position < source.length:
            stop = min(source.length, session.position + chunk, next_cp)
            inp = source.read(session.position, stop)
            t0 = time.perf_counter()
            session.feed(inp, outputs="none")
            report.chunk_seconds.append(time.perf_counter() - t0)
            report.tokens += inp.shape[1]
            if bar is not None:
                bar.update(inp.shape[1])
            if session.position == next_cp or session.position == source.length:
                report.checkpoints.append({"position": session.position, "rss": rss_bytes(),
                                           "peak_rss": peak_rss_bytes(),
                                           "seconds": time.perf_counter() - t_start})
                if save_state is not None:
                    _save(session, save_state)
                    report.saved = session.position
                if on_checkpoint is not None:
                    on_checkpoint(session, session.position)
                next_cp += checkpoint_every
                if bar is not None:
                    bar.set_postfix(tok_s=f"{report.tokens / (time.perf_counter() - t_start):,.0f}",
                                    rss=f"{rss_bytes() / 2**20:.0f}MiB")
    finally:
        if bar is not None:
            bar.close()
        report.seconds = time.perf_counter() - t_start
        report.state_nbytes = session.state_nbytes
    return report


def _save(session, path) -> None:
    """session.save_state; a system error without a file name (ENOSPC while writing) gets the file's."""
    try:
        session.save_state(path)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc


def _bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    if not sys.stderr.isatty():  # a log file: periodic plain lines, not carriage-return updates
        return PlainProgress(total, initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, smoothing=0.1)


class PlainProgress:
    """tqdm's ``update``/``set_postfix``/``close`` as one plain line per ``step`` of the run (10%) or per
    ``seconds`` (60 s), whichever comes first, and one at the end."""

    def __init__(self, total: int, initial: int = 0, step: float = 0.1, seconds: float = 60.0, file=None):
        self.total, self.initial, self.n = total, initial, initial
        self.every = max(1, round((total - initial) * step))
        self.seconds, self.file = seconds, file or sys.stderr
        self.start = self.last = time.perf_counter()
        self.next, self.postfix, self.shown = initial + self.every, "", initial

    def update(self, n: int) -> None:
        self.n += n
        if self.n >= self.next or time.perf_counter() - self.last >= self.seconds:
            self._line()

    def set_postfix(self, **items) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items() if k != "tok_s")  # the line has the rate

    def close(self) -> None:
        if self.n != self.shown:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        rate = (self.n - self.initial) / (now - self.start) if now > self.start else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.n:,}/{self.total:,} tok{pct}, {rate:,.0f} tok/s" + (f", {self.postfix}" if self.postfix else ""),
              file=self.file, flush=True)
        self.last, self.shown = now, self.n
        while self.next <= self.n:
            self.next += self.every


def segment_time_profile(report: StreamReport, tokens_per_chunk: int, window_tokens: int = BLOCK) -> list[float]:
    """Median seconds per chunk in consecutive windows of the stream (flat when time per segment is flat;
    the median shrugs off other processes stealing the CPU now and then)."""
    per = max(1, window_tokens // tokens_per_chunk)
    t = np.asarray(report.chunk_seconds)
    return [float(np.median(t[i:i + per])) for i in range(0, len(t) - per + 1, per)]

"""Drive a long stream through an InfiniSession: inputs from a file or generated, chunked,
with progress, throughput, memory and optional atomic state checkpoints (used by the CLI,
the demo and benchmarks/bench_onnx.py). Nothing here grows with the stream's length except
one float per chunk of timings.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
            if session.kind != "lm":
                raise ValueError("tokens file: expected an LM model (a single-layer model takes generated x)")
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
        if s.kind == "lm":
            block = rng.integers(0, s.config.vocab_size, (s.batch, BLOCK))
        else:
            block = rng.standard_normal((s.batch, BLOCK, s.attn.d_model)).astype(np.float32)
        self._cached = (b, block)
        return block


def load_token_file(path, raw_dtype: str = "uint16") -> np.ndarray:
    """Token ids from .npy (memory-mapped), .txt (whitespace-separated) or raw binary (``raw_dtype``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokens: expected a file of token ids, got {str(path)!r}")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
    elif path.suffix == ".txt":
        arr = np.loadtxt(path, dtype=np.int64, ndmin=1)
    else:
        arr = np.memmap(path, dtype=np.dtype(raw_dtype), mode="r")
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens {str(path)!r}: expected integer ids of shape (T,) or (B, T), got {arr.dtype} "
                         f"{arr.shape}")
    return arr


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
               save_state=None, on_checkpoint=None, progress: bool = True) -> StreamReport:
    """Feed ``source`` from ``session.position`` to its end in calls of ``chunk`` tokens (default N).

    Every ``checkpoint_every`` tokens: record memory, save the state atomically to ``save_state``
    (if given) and call ``on_checkpoint(session, position)``. An exception (or Ctrl-C) leaves the
    last saved file as it was.
    """
    chunk = chunk or session.segment_len
    if chunk < 1:
        raise ValueError(f"chunk: expected tokens per call >= 1, got {chunk}")
    report = StreamReport()
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
                    session.save_state(save_state)
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


def _bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, smoothing=0.1)


def segment_time_profile(report: StreamReport, tokens_per_chunk: int, window_tokens: int = BLOCK) -> list[float]:
    """Median seconds per chunk in consecutive windows of the stream (flat when time per segment is flat;
    the median shrugs off other processes stealing the CPU now and then)."""
    per = max(1, window_tokens // tokens_per_chunk)
    t = np.asarray(report.chunk_seconds)
    return [float(np.median(t[i:i + per])) for i in range(0, len(t) - per + 1, per)]

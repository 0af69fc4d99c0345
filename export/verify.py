"""Independent verification of an ONNX Runtime stream against PyTorch (`infini demo`, both parts).

PyTorch (float32) is fed the same stream from token 0 on its own state, in a second process
(`TorchFollower`), and never sees ONNX Runtime's. At each checkpoint the two memories (M, z of
every layer) are compared, then both run the next N + 3 tokens (a prefill of N - 2 tokens and
single tokens, crossing a segment boundary) from their own states and their logits and memories
are compared (`verify_against_torch`); the ORT stream is rolled back and goes on unchanged. So
drift accumulated over the stream shows as a growing ratio to the float32 tolerance
(`drift_line`), which the demo prints for its first and last checkpoint.
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from ..reference.tolerances import OUTPUT_TOLERANCES, STATE_TOLERANCES, compare, tolerance_for
from .stream import run_stream

TRUTH_CHUNK = 2048  # tokens per call of the float64 follower (its sums are exact enough in any split)
RECORD_TIMEOUT = 600  # seconds without a record from the follower before the demo gives up on it


def checkpoint_positions(length: int, every: int) -> list[int]:
    """Where `run_stream` calls back (every ``every`` tokens and at the end), with 0 first."""
    return sorted(set(range(0, length, every)) | {length})


def lookahead(position: int, length: int, N: int) -> tuple[int, list[int]]:
    """(stop, cuts): the N + 3 tokens after ``position`` as a prefill of N - 2 then single tokens."""
    stop = min(length, position + N + 3)
    n = stop - position
    return stop, sorted({0, min(N - 2, n)} | set(range(N - 1, n + 1))) if n > 0 else [0]


class TorchFollower:
    """PyTorch float32 fed ``source`` from token 0 on its own state, in a second process.

    A process of its own: nothing of ORT's can leak into it, it runs beside the ORT stream (one
    thread each on two cores), and its memory stays out of the stream's resident-memory figures.
    It makes one call per segment, as the exported graph does, so that its float32 sums of M and z
    are formed in the same order and any difference is the implementations'. At each of
    ``positions`` it sends its memory, then the logits and memory after the `lookahead` tokens run
    from a copy of its state; at the last, also ``greedy`` tokens decoded greedily. ``truth``: also
    follow in float64 (calls of TRUTH_CHUNK tokens) and send that memory: how far float32 sums
    have drifted from exact ones, in both implementations.

    A plain ``python -c`` child (not multiprocessing, which re-runs the caller's main module and
    hung when the child died early): arguments in a pickle file, records length-prefixed on its
    stdout; a child that dies or stays silent for RECORD_TIMEOUT seconds is an error, never a hang."""

    def __init__(self, config, params: dict, source, positions: list[int], batch: int = 1, greedy: int = 0,
                 truth: bool = False, threads: int = 1):
        import pickle
        import subprocess
        import sys
        import tempfile

        self._args = tempfile.NamedTemporaryFile(prefix="infini-demo-", suffix=".pkl")
        params = {k: np.asarray(v, np.float64) for k, v in params.items()}
        pickle.dump((config, params, source, positions, batch, greedy, truth, threads), self._args)
        self._args.flush()
        code = f"from {__name__} import follower_main; follower_main()"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # torch's OpenMP threads would spin on busy cores
        self._proc = subprocess.Popen([sys.executable, "-c", code, self._args.name], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, env=env)
        self._fd = self._proc.stdout.fileno()
        self.seconds, self.last = 0.0, None

    def record(self, position: int) -> dict:
        """The follower's record at ``position`` (waits for it)."""
        import pickle
        import select

        deadline = time.monotonic() + RECORD_TIMEOUT
        while not select.select([self._fd], [], [], 0.5)[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo: no word from the PyTorch process for {RECORD_TIMEOUT} s "
                                   f"(waiting for token {position:,})")
        try:
            rec = pickle.loads(self._read(struct.unpack("<Q", self._read(8))[0]))
        except EOFError:
            raise RuntimeError(f"demo: the PyTorch process stopped (exit code {self._proc.wait()}) before token "
                               f"{position:,}") from None
        if "error" in rec:
            raise RuntimeError("demo: the PyTorch process failed:\n" + rec["error"])
        if rec["position"] != position:
            raise RuntimeError(f"demo: PyTorch sent token {rec['position']:,}, expected {position:,}")
        self.seconds, self.last = rec["seconds"], rec
        return rec

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = os.read(self._fd, n - len(buf))
            if not part:
                raise EOFError
            buf += part
        return bytes(buf)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()
        self._args.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def follower_main() -> None:
    """The follower process (`TorchFollower`): ``argv[1]`` holds its arguments; records go to stdout."""
    import pickle
    import sys

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr: stdout carries only the records

    def send(rec: dict) -> None:
        data = pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(struct.pack("<Q", len(data)) + data)
        out.flush()

    try:
        with open(sys.argv[1], "rb") as f:
            args = pickle.load(f)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        import traceback

        send({"error": traceback.format_exc()})
        return
    _follow(send, *args)


def _memory(states) -> list:
    return [(st.M.numpy().copy(), st.z.numpy().copy()) for st in states]


class _Track:
    """One model reading the stream from token 0 in calls of ``chunk`` tokens, on its own state."""

    def __init__(self, model, chunk: int, batch: int):
        self.model, self.chunk, self.states, self.position, self.last = model, chunk, model.init_states(batch), 0, None

    def advance(self, source, position: int) -> None:
        import torch

        while self.position < position:
            stop = min(position, self.position + self.chunk)
            y, self.states = self.model(torch.as_tensor(source.read(self.position, stop)), self.states)
            self.position, self.last = stop, y[:, -1]  # last: logits of the newest token


def _follow(send, config, params, source, positions, batch, greedy, truth, threads) -> None:
    """Stream ``source`` through PyTorch and ``send`` one record per position (an error as a record)."""
    import traceback

    try:
        import torch

        from ..torch_impl import InfiniTransformerLM

        torch.set_num_threads(threads)
        N, busy = config.attn.segment_len, 0.0
        main = _Track(InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval(), N, batch)
        exact = (_Track(InfiniTransformerLM.from_numpy(config, params, dtype=torch.float64).eval(), TRUTH_CHUNK,
                        batch) if truth else None)
        model = main.model
        with torch.no_grad():
            for p in positions:
                t0 = time.perf_counter()
                main.advance(source, p)
                rec = {"position": p, "memory": _memory(main.states)}
                if exact is not None and p:
                    exact.advance(source, p)
                    rec["memory64"] = _memory(exact.states)
                stop, cuts = lookahead(p, source.length, N)
                if stop > p:  # from a copy of the state: the track itself stays at p
                    ids, outs, sts = source.read(p, stop), [], main.states
                    for a, b in zip(cuts, cuts[1:]):
                        y, sts = model(torch.as_tensor(ids[:, a:b]), sts)
                        outs.append(y.numpy())
                    rec.update(logits=np.concatenate(outs, 1), memory_after=_memory(sts))
                if p == positions[-1] and greedy and main.last is not None:
                    toks, sts = [main.last.argmax(-1, keepdim=True)], main.states
                    for _ in range(greedy - 1):
                        y, sts = model(toks[-1], sts)
                        toks.append(y[:, -1:].argmax(-1))
                    rec["greedy"] = torch.cat(toks, 1).numpy()
                busy += time.perf_counter() - t0
                rec["seconds"] = busy  # computing, not waiting for the parent to take the record
                send(rec)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        send({"error": traceback.format_exc()})


@dataclass
class Check:
    """One checkpoint: the worst ratio to the float32 tolerance per quantity (over layers)."""

    position: int
    stop: int
    scores: dict = field(default_factory=dict)  # "logits", "M", "z" -> worst score, ORT vs PyTorch float32
    misses: list = field(default_factory=list)  # messages of the comparisons that failed
    exact: float | None = None  # ORT's M, z against the float64 follower (a measurement, not a verdict)

    @property
    def ok(self) -> bool:
        return not self.misses

    def add(self, key: str, comparison) -> None:
        self.scores[key] = max(self.scores.get(key, 0.0), comparison.score)
        if not comparison.ok:
            self.misses.append(comparison.message())

    def line(self) -> str:
        span = f"tokens {self.position:,}..{self.stop - 1:,}" if self.stop > self.position else f"at {self.position:,}"
        ratios = ", ".join(f"{k} {self.scores[k]:.3g}x" for k in ("logits", "M", "z") if k in self.scores)
        exact = "" if self.exact is None else f" (M, z vs float64: {self.exact:.3g}x)"
        return (f"ORT vs PyTorch ({span}): {ratios} the float32 tolerance{exact}: "
                + ("ok" if self.ok else "MISMATCH: " + "; ".join(self.misses)))


def _compare_states(ort_state: dict, memory: list, where: int) -> list:
    tol = tolerance_for("float32", STATE_TOLERANCES)
    return [(f, compare(f"layer {i} {f} at {where:,}", ort_state[f"past_memory.{i}.{f}"], want, tol))
            for i, (M, z) in enumerate(memory) for f, want in (("M", M), ("z", z))]


def verify_against_torch(session, follower: TorchFollower, source, position: int) -> Check:
    """Compare ORT at ``position`` with the follower's own memory there; run the `lookahead` tokens
    in ORT, compare logits and memory with the follower's, and roll ORT back."""
    rec = follower.record(position)
    stop, cuts = lookahead(position, source.length, session.segment_len)
    check = Check(position, stop)
    snapshot = session.state()
    if position:
        for key, c in _compare_states(snapshot, rec["memory"], position):
            check.add(key, c)
    if "memory64" in rec:
        check.exact = max(c.score for _, c in _compare_states(snapshot, rec["memory64"], position))
    if stop <= position:
        return check
    ids = source.read(position, stop)
    ort_out = [session.feed(ids[:, a:b]) for a, b in zip(cuts, cuts[1:])]
    got = session.state()
    session.set_state(snapshot, position=position)
    check.add("logits", compare(f"logits of tokens {position:,}..{stop - 1:,}", np.concatenate(ort_out, 1),
                                rec["logits"], tolerance_for("float32", OUTPUT_TOLERANCES)))
    for key, c in _compare_states(got, rec["memory_after"], stop):
        check.add(key, c)
    return check


def drift_line(checks: list) -> str:
    """The worst ratio to the float32 tolerance at the first and the last checkpoint past token 0."""
    def span(label, seen):
        (p0, s0), (p1, s1) = seen[0], seen[-1]
        return f"{label} {s0:.3g}x at {p0:,} -> {s1:.3g}x at {p1:,}"

    parts = []
    for label, keys in (("logits", ("logits",)), ("M, z", ("M", "z"))):
        seen = [(c.position, max(c.scores[k] for k in keys if k in c.scores)) for c in checks
                if c.position and any(k in c.scores for k in keys)]
        if seen:
            parts.append(span(label, seen))
    line = ("drift, ORT vs PyTorch each on its own state from token 0 (worst ratio to the float32 tolerance, "
            "first checkpoint -> last): " + "; ".join(parts))
    exact = [(c.position, c.exact) for c in checks if c.exact is not None]
    if exact:
        line += ("\n      " + span("against float64 sums, ORT's M, z", exact) + " (float32 sums of one segment at a "
                 "time, the same in both implementations)")
    return line


def follow_stream(session, follower: TorchFollower, source, verify_every: int, progress: bool = True,
                  chunk: int | None = None):
    """`run_stream` with `verify_against_torch` at token 0 and every checkpoint -> (checks, report).

    The report's time and throughput are ONNX Runtime's: time spent verifying is taken out."""
    spent = [0.0]

    def verify(sess, position):
        t0 = time.perf_counter()
        checks.append(verify_against_torch(sess, follower, source, position))
        spent[0] += time.perf_counter() - t0

    checks = []
    verify(session, session.position)
    spent[0] = 0.0  # that check ran before the stream's clock started
    report = run_stream(session, source, chunk=chunk, checkpoint_every=verify_every, progress=progress,
                        on_checkpoint=verify)
    report.seconds -= spent[0]
    return checks, report

"""Streaming passkey documents through ONNX Runtime, in batches spread over processes (evaluate.py).

A batch is ``PIECE`` documents of one cell; the batches are the same whatever the number of
processes, so every cell's answers are too (tests/test_passkey_smoke.py checks it).
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

import numpy as np

from infini_attention.export.passkey import data
from infini_attention.export.passkey.exported import open_session

FEED_CHUNK = 4096  # tokens generated and handed to the session per feed() (it runs one call per segment)
PIECE = 8  # documents per ORT batch; fixed, so that a cell's answers do not depend on --jobs


def stream_docs(session, docs: list, progress=None) -> np.ndarray:
    """Feed the prompts of ``docs`` (same length) chunk by chunk, then decode 5 tokens greedily.

    Returns the decoded tokens (B, 5). The session is reset first."""
    length = docs[0].length
    assert all(d.length == length for d in docs)
    session.reset(len(docs))
    pos = 0
    while pos < length:
        stop = min(length, pos + FEED_CHUNK)
        session.feed(np.stack([d.chunk(pos, stop) for d in docs]), outputs="none")
        if progress is not None:
            progress.update((stop - pos) * len(docs))
        pos = stop
    return session.generate(data.N_DIGITS)


def score_cell(docs: list, pred: np.ndarray, seconds: float, length: int, segment_len: int) -> dict:
    answers = np.stack([d.answer for d in docs])
    correct = (pred == answers).all(axis=1)
    d0, n = docs[0], len(docs)
    return {
        "length": length, "prompt_length": d0.length, "depth": d0.depth, "samples": n, "correct": int(correct.sum()),
        "accuracy": float(correct.mean()), "digit_accuracy": float((pred == answers).mean()),
        "key_pos": d0.key_pos, "distance": d0.distance,
        "in_last_segment": d0.key_pos // segment_len == d0.question_pos // segment_len,
        "seconds": round(seconds, 2), "tokens_per_second": round(n * (length + data.N_DIGITS) / seconds),
        "examples": [{"passkey": "".join(map(str, d.answer)), "answer": "".join(map(str, p))}
                     for d, p in zip(docs[:3], pred[:3])],
    }


_SESSIONS: dict = {}  # one session per exported file per worker process (reset per batch)


def _stream_piece(onnx_path: str, threads: int, docs: list):
    """Worker: -> (greedy answers (B, 5), seconds)."""
    if onnx_path not in _SESSIONS:
        _SESSIONS[onnx_path] = open_session(Path(onnx_path), len(docs), threads)
    t0 = time.perf_counter()
    pred = stream_docs(_SESSIONS[onnx_path], docs)
    return pred, time.perf_counter() - t0


class _Piece(NamedTuple):
    cell: int  # index into the cells
    start: int  # first document of the cell in this piece
    docs: list  # the piece's documents (at most PIECE)
    cost: int  # tokens to stream: the longest pieces go first


def _pieces(cells: list) -> list:
    pieces = []
    for ci, c in enumerate(cells):
        for i in range(0, len(c["docs"]), PIECE):
            docs = c["docs"][i:i + PIECE]
            pieces.append(_Piece(ci, i, docs, c["length"] * len(docs)))
    return sorted(pieces, key=lambda p: -p.cost)


def run_cells(cells: list, jobs: int, threads: int, progress: bool = True) -> None:
    """Stream every cell (a dict with ``onnx``, ``docs``, ``length``, ``N``, ``labels``, ``describe``) in
    pieces of PIECE documents over ``jobs`` processes, longest first; sets each cell's ``result``."""
    pieces = _pieces(cells)
    done = {ci: {} for ci in range(len(cells))}  # cell -> {start: (answers, seconds)}
    bar = _bar(sum(p.cost for p in pieces), progress)

    def finished(p: _Piece, pred, seconds):
        done[p.cell][p.start] = pred, seconds
        bar.update(p.cost)
        c = cells[p.cell]
        if len(done[p.cell]) * PIECE >= len(c["docs"]):  # the cell's last piece
            own = [done[p.cell][i] for i in sorted(done[p.cell])]
            c["result"] = score_cell(c["docs"], np.concatenate([a for a, _ in own]),
                                     sum(s for _, s in own), c["length"], c["N"])
            c["result"].update(c["labels"])
            bar.write(c["describe"](c["result"]))

    if jobs == 1:
        for p in pieces:
            finished(p, *_stream_piece(str(cells[p.cell]["onnx"]), threads, p.docs))
    else:
        # spawn, not fork: the parent holds torch and ONNX Runtime thread pools from the exports
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_stream_piece, str(cells[p.cell]["onnx"]), threads, p.docs): p for p in pieces}
            for fut in as_completed(futures):
                finished(futures[fut], *fut.result())
    bar.close()


class _bar:
    """tqdm over tokens streamed, or plain printing without tqdm / with ``progress=False``."""

    def __init__(self, total: int, progress: bool):
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, desc="passkey eval")
        except ImportError:  # pragma: no cover
            self._bar = None

    def update(self, n):
        if self._bar is not None:
            self._bar.update(n)

    def write(self, text):
        (self._bar.write if self._bar is not None else print)(text)

    def close(self):
        if self._bar is not None:
            self._bar.close()

"""StreamPool: many streams, each at its own position, served by one ONNX Runtime session (SPEC.md §4.4).

Streams join and leave at any time. `feed` takes a chunk for any subset of the streams and runs them
together: each ONNX call of the many-streams export (``ragged_graph.py``) carries, for every stream in it, at
most the rest of its segment (``torch_impl.ragged.row_lengths``), rows padded to the longest; a stream with
more tokens takes further calls. Each stream's outputs and state equal the same stream run alone in an
`InfiniSession` (tests/test_pool.py). A stream's state is kept on the host in the session's layout (batch 1,
pending keys/values of length n), so `park` writes exactly `InfiniSession.save_state`'s file and `resume`
reads one (statefile.py, checks.read_state_file): streams move between a pool, a session, another process or
another machine. Every method checks its arguments first and changes nothing on error.
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..reference import io_spec
from ..reference.validate import check_token_ids
from ..torch_impl.ragged import row_lengths
from . import checks
from .providers import select_provider
from .ragged_graph import model_config, write_ragged
from .session import STATE_FILE_FORMAT
from .statefile import write_state_file

MAX_CHUNK = 65536  # the most tokens one stream may bring to one `feed` (bounds the work a request can ask for)
_RAGGED_CACHE: dict = {}  # stateful export path -> its ragged export written in this process


@dataclass
class _Stream:
    state: dict  # the session layout: past_segments (), then per layer key/value (1, Hkv, n, d), M, z
    position: int = 0
    last: np.ndarray | None = field(default=None, repr=False)  # LM: the last position's logits (V,)


class StreamPool:
    """Streams over one exported model (``model``: an ``infini export`` file, or its ragged export).

    provider: "cpu" (default), "auto" or "cuda" (providers.py); max_chunk: the most tokens one stream may bring
    to one `feed` call; intra_op_threads: ORT's CPU threads."""

    def __init__(self, model, provider: str = "cpu", *, max_chunk: int = MAX_CHUNK,
                 intra_op_threads: int | None = None):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model: expected an .onnx file exported by `infini export`, got {str(model)!r}")
        if isinstance(max_chunk, bool) or not isinstance(max_chunk, int) or max_chunk < 1:
            raise ValueError(f"max_chunk: expected an integer >= 1, got {max_chunk!r}")
        fmt, config, meta = model_config(path)
        if fmt == io_spec.FORMAT:
            path = _ragged_for(path)
        elif fmt != io_spec.RAGGED_FORMAT:
            raise ValueError(f"model: expected a stateful export of `infini export` (format {io_spec.FORMAT!r}) or "
                             f"its ragged export, got format {fmt!r} in {str(model)!r}")
        self.config, self.kind, self.max_chunk = config, config.kind, max_chunk
        self.model_id, self.attn = meta[io_spec.METADATA_KEYS["model_id"]], config.attn
        self.compute_dtype = meta[io_spec.METADATA_KEYS["compute_dtype"]]
        self.state_dtype = meta.get(io_spec.METADATA_KEYS["state_dtype"], "float32")
        self.segment_len = self.attn.segment_len
        # the session layout of a state (what park/resume exchange), and the graph's
        self.state_specs = [s for s in io_spec.inputs(config, self.compute_dtype, self.state_dtype) if s.is_state]
        self._key0 = self.state_specs[1].name
        specs = io_spec.ragged_specs(config, self.compute_dtype, self.state_dtype)
        self._inputs = [s.name for s in specs if s.direction == "in"]
        self._outputs = [s.name for s in specs if s.direction == "out"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads:
            so.intra_op_num_threads = int(intra_op_threads)
        choice = select_provider(provider)
        self._sess = ort.InferenceSession(str(path), so, providers=choice.providers)
        self.provider_used = self._sess.get_providers()[0]
        self._streams: dict[str, _Stream] = {}

    # -------------------------------------------------------------------- streams

    def __contains__(self, stream_id) -> bool:
        return str(stream_id) in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def add(self, stream_id) -> str:
        """A new stream (M = z = 0, nothing pending) under ``stream_id`` (any str/int; kept as str)."""
        key = str(stream_id)
        if key in self._streams:
            raise ValueError(f"stream_id: expected a new stream id, got {key!r}, which is already in the pool")
        self._streams[key] = _Stream({s.name: np.zeros(checks.concrete(s.dims, 1, 0), np.dtype(s.dtype))
                                      for s in self.state_specs})
        return key

    def drop(self, stream_id) -> None:
        del self._streams[self._key(stream_id)]

    def position(self, stream_id) -> int:
        return self._streams[self._key(stream_id)].position

    def state(self, stream_id) -> dict[str, np.ndarray]:
        """A copy of the stream's state in `InfiniSession.state()`'s layout (batch 1)."""
        return {n: a.copy() for n, a in self._streams[self._key(stream_id)].state.items()}

    def park(self, stream_id, path=None, *, keep: bool = False):
        """Take the stream out of the pool (``keep``: leave it in too) as a state file: written atomically to
        ``path`` (returns the Path), or returned as bytes. `InfiniSession.load_state` and `resume` read it."""
        key = self._key(stream_id)
        s = self._streams[key]
        meta = {"format": STATE_FILE_FORMAT, "model_id": self.model_id, "kind": self.kind,
                "config": self.config.to_dict(), "position": s.position, "batch": 1}
        if path is None:
            buf = io.BytesIO()
            np.savez(buf, **s.state, __meta__=np.array(json.dumps(meta)))
            out = buf.getvalue()
        else:
            out = write_state_file(path, s.state, meta)
        if not keep:
            del self._streams[key]
        return out

    def resume(self, source, stream_id) -> str:
        """Bring back a parked stream (a state file path, or the bytes `park` returned) as ``stream_id``;
        the file must be of this model and consistent (checks.read_state_file), batch 1."""
        key = str(stream_id)
        if key in self._streams:
            raise ValueError(f"stream_id: expected an id not in the pool, got {key!r}, which is already in it")
        if isinstance(source, (bytes, bytearray)):
            with tempfile.NamedTemporaryFile(suffix=".npz") as f:
                f.write(source)
                f.flush()
                arrays, meta = checks.read_state_file(self, f.name)
        else:
            arrays, meta = checks.read_state_file(self, source)
        if np.shape(arrays[self._key0])[0] != 1:
            raise ValueError(f"state: expected a state of one stream (batch 1), got batch {np.shape(arrays[self._key0])[0]}")
        self._streams[key] = _Stream({s.name: np.array(arrays[s.name], order="C") for s in self.state_specs},
                                     int(meta["position"]))
        return key

    # -------------------------------------------------------------------- running

    def check_chunk(self, stream_id, chunk) -> np.ndarray:
        """The chunk of one stream as the graph takes it (LM: ids (T,) int64; layer: x (T, D)), or a ValueError
        naming the stream and what is wrong. (1, T[, D]) is accepted too."""
        self._key(stream_id)
        arr = np.asarray(chunk)
        lead = 2 if self.kind == "lm" else 3
        if arr.ndim == lead and arr.shape[0] == 1:
            arr = arr[0]
        name = f"stream {str(stream_id)!r}: " + ("input_ids" if self.kind == "lm" else "x")
        if arr.ndim >= 1 and arr.shape[0] > self.max_chunk:  # before reading any value: bounds a request's work
            raise ValueError(f"{name}: expected at most max_chunk={self.max_chunk} tokens, got {arr.shape[0]}")
        if self.kind == "lm":
            if arr.ndim != 1:
                raise ValueError(f"{name}: expected integer ids of shape (T,) or (1, T), got {arr.dtype} "
                                 f"{tuple(arr.shape)}")
            check_token_ids(self.config.vocab_size, arr[None], name)
            arr = arr.astype(np.int64, copy=False)
        else:
            D = self.attn.d_model
            if arr.ndim != 2 or arr.shape[1] != D or not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"{name}: expected a float array of shape (T, d_model={D}), got {arr.dtype} "
                                 f"{tuple(arr.shape)}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name}: expected finite values, got NaN/Inf")
            arr = arr.astype(self.compute_dtype, copy=False)
        return arr

    def feed(self, chunks: dict, outputs: str = "all") -> dict:
        """Run ``chunks`` ({stream id: its next tokens}) together -> {stream id: outputs}: "all" (T, V) logits /
        (T, D) y, "last" the last position's (V,) / (D,) (None for T = 0), "none" None. All checked first; on
        any error no stream changes."""
        if outputs not in ("all", "last", "none"):
            raise ValueError(f"outputs: expected 'all', 'last' or 'none', got {outputs!r}")
        arrs = {self._key(k): self.check_chunk(k, v) for k, v in chunks.items()}
        keys = list(arrs)
        states = {k: dict(self._streams[k].state) for k in keys}
        done = {k: 0 for k in keys}
        outs: dict = {k: [] for k in keys}
        while True:
            todo = [k for k in keys if done[k] < len(arrs[k])]
            if not todo:
                break
            pend = [self._pending(states[k]) for k in todo]
            lens = row_lengths(pend, [len(arrs[k]) - done[k] for k in todo], self.segment_len)
            ys, new = self._run([arrs[k][done[k]:done[k] + t] for k, t in zip(todo, lens)],
                                [states[k] for k in todo], lens)
            for i, (k, t) in enumerate(zip(todo, lens)):
                states[k], done[k] = new[i], done[k] + t
                outs[k].append(ys[i, :t])
        result = {}
        for k in keys:  # commit: every call succeeded
            s, T = self._streams[k], len(arrs[k])
            s.state, s.position = states[k], s.position + T
            full = np.concatenate(outs[k]) if outs[k] else np.zeros((0, self._width()), np.float32)
            if T and self.kind == "lm":
                s.last = full[-1]
            result[k] = full if outputs == "all" else (full[-1] if T else None) if outputs == "last" else None
        return result

    def generate(self, stream_ids, max_new_tokens: int) -> dict:
        """LM: greedy tokens for each of ``stream_ids`` (already fed), all streams one call per step ->
        {stream id: int64 (max_new_tokens,)}."""
        if self.kind != "lm":
            raise ValueError("generate: expected an LM model, this file is a single layer (kind 'layer')")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        keys = [self._key(k) for k in stream_ids]
        for k in keys:
            if self._streams[k].last is None:
                raise ValueError(f"stream {k!r}: expected a stream already fed (no logits to start from)")
        out = {k: np.zeros(max_new_tokens, np.int64) for k in keys}
        for i in range(max_new_tokens):
            step = {k: np.array([int(np.argmax(self._streams[k].last))]) for k in keys}
            for k in keys:
                out[k][i] = step[k][0]
            self.feed(step, outputs="none")
        return out

    # -------------------------------------------------------------------- internals

    def _key(self, stream_id) -> str:
        key = str(stream_id)
        if key not in self._streams:
            shown = ", ".join(map(repr, list(self._streams)[:5])) + (" ..." if len(self._streams) > 5 else "")
            raise ValueError(f"stream_id: expected a stream in the pool ({shown or 'none'}), got {key!r}")
        return key

    def _pending(self, state: dict) -> int:
        return int(np.shape(state[self._key0])[2])

    def _width(self) -> int:
        return self.config.vocab_size if self.kind == "lm" else self.attn.d_model

    def _run(self, pieces: list, states: list, lens: list):
        """One ONNX call: row b = pieces[b] (t_b tokens) after states[b] -> (outputs (B, T, W), new states)."""
        N, B, T = self.segment_len, len(pieces), max(max(lens), 1)
        first = np.zeros((B, T) + pieces[0].shape[1:], pieces[0].dtype)
        for b, p in enumerate(pieces):
            first[b, :len(p)] = p
        pend = np.array([self._pending(s) for s in states], np.int64)
        feeds = {self._inputs[0]: first, "chunk_lengths": np.array(lens, np.int64)[:, None], "past_pending": pend[:, None],
                 "past_segments": np.array([int(s["past_segments"]) for s in states], np.int64)[:, None]}
        for spec in self.state_specs[1:]:  # key/value in N slots (zeros after the n valid ones), M, z stacked
            if "past_key_values" in spec.name:
                buf = np.zeros((B,) + spec.dims[1:2] + (N,) + spec.dims[3:], np.dtype(spec.dtype))
                for b, st in enumerate(states):
                    buf[b, :, :pend[b]] = st[spec.name][0]
                feeds[spec.name] = buf
            else:
                feeds[spec.name] = np.concatenate([st[spec.name] for st in states])
        values = dict(zip(self._outputs, self._sess.run(self._outputs, feeds)))
        new = []
        for b in range(B):
            n = int(values["present_pending"][b, 0])
            st = {"past_segments": np.array(values["present_segments"][b, 0], np.int64)}
            for spec in self.state_specs[1:]:
                out = values[spec.name.replace("past_key_values", "present").replace("past_memory", "present_memory")]
                st[spec.name] = np.ascontiguousarray(out[b:b + 1, :, :n] if "past_key_values" in spec.name
                                                     else out[b:b + 1])
            new.append(st)
        return values[self._outputs[0]], new


def _ragged_for(path: Path) -> Path:
    """The ragged export of a stateful export, written once per process into a temporary directory."""
    key = str(path.resolve())
    if key not in _RAGGED_CACHE:
        directory = Path(tempfile.mkdtemp(prefix="infini-ragged-"))
        _RAGGED_CACHE[key] = write_ragged(path, directory / (path.stem + ".ragged.onnx"))
    return _RAGGED_CACHE[key]

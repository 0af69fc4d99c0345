"""InfiniSession: stream inputs of any length through an exported model in ONNX Runtime.

The state lives in ONNX Runtime OrtValues on the session's device and goes from one call to the next
without visiting the host (on CPU through ``run_with_ort_values``, on CUDA with IOBinding; engine.py);
it is copied out only by `state()` / `save_state`. One ONNX call takes any number of tokens (the graph
processes every segment it completes, io_spec.py); `feed` cuts a call only to first complete a segment
left unfinished (so long calls start on a boundary) and to keep each call within ``max_call_segments``
segments (activations stay bounded). A call that stays inside its segment (decoding) runs on the file's
inside branch as a graph of its own (engine.py). The result is the same for any split of the stream
(SPEC.md §4.3). Inputs and states are checked before ONNX Runtime runs (`checks.py`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..reference import io_spec
from . import checks
from .engine import Engine
from .providers import select_provider
from .statefile import write_state_file

STATE_FILE_FORMAT = "infini-attention-state/1"
MAX_CALL_SEGMENTS = 16  # the most segments one ONNX call of `feed` carries (activations grow with the call)


class InfiniSession:
    """A stream over one exported model (``kind`` "lm": token ids in, logits out; "layer": x in, y out).

    provider: "auto" (CUDA when it really loads, else CPU), "cuda" (error if it does not load)
    or "cpu". ``provider_used`` and ``provider_reason`` say which one runs and why.
    intra_op_threads: ORT's CPU threads (default: one per physical core); spinning: let idle ORT
    threads busy-wait between calls (lower latency on an otherwise idle machine). max_call_segments:
    the most segments one ONNX call carries (longer inputs are cut at segment boundaries).
    profile: a file prefix for ONNX Runtime's profiler (``end_profiling()`` writes the JSON).
    decode_graph: run calls that stay inside their segment (decoding) on the file's inside branch as a graph
    of its own (engine.py: faster; loaded on the first such call, a second copy of the weights);
    ``decode_graph`` then says whether one is used.
    """

    def __init__(self, path, provider: str = "auto", batch: int = 1, *, intra_op_threads: int | None = None,
                 spinning: bool = False, cuda_options: dict | None = None,
                 max_call_segments: int = MAX_CALL_SEGMENTS, profile: str | None = None, decode_graph: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model: expected an .onnx file exported by `infini export`, got {str(path)!r}")
        if isinstance(max_call_segments, bool) or not isinstance(max_call_segments, int) or max_call_segments < 1:
            raise ValueError(f"max_call_segments: expected an integer >= 1, got {max_call_segments!r}")
        self.max_call_segments = max_call_segments
        checks.check_model_file(self.path)  # format version and opset, before ONNX Runtime parses the graph
        so = ort.SessionOptions()
        if profile:
            so.enable_profiling, so.profile_file_prefix = True, str(profile)
        so.log_severity_level = 3
        if intra_op_threads:
            so.intra_op_num_threads = int(intra_op_threads)
        # Idle ORT threads spin between calls by default; a stream is many short calls with Python in
        # between, and on a shared CPU spinning halved prefill throughput (median 30 vs 18 ms/segment).
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        choice = select_provider(provider, cuda_options)
        self._engine = Engine(self.path, so, choice.providers, decode_graph)
        self._sess = self._engine.sess
        self.provider_used, self.provider_reason = choice.confirm(self._sess.get_providers())

        meta = checks.model_metadata(self._sess, self.path)  # config, dtypes, model_id; graph I/O checked
        self.kind, self.config = meta["kind"], meta["config"]
        self.compute_dtype, self.model_id = meta["compute_dtype"], meta["model_id"]
        self.state_dtype = meta["state_dtype"]
        self.attn = self.config.layer_configs[0]  # layer 0's config (a "model"'s layers may differ but in N)
        self.segment_len = self.config.segment_len
        self.specs = io_spec.specs(self.config, self.compute_dtype, self.state_dtype)
        self.inputs = [s for s in self.specs if s.direction == "in"]
        self.outputs = [s for s in self.specs if s.direction == "out"]
        self.state_specs = [s for s in self.inputs if s.is_state]  # past_segments, then k, v, M, z per layer
        self._key0 = self.state_specs[1].name  # past_key_values.0.key: its dim 2 is the pending length
        e = self._engine
        e.device = ("cuda", choice.device_id) if self.provider_used == "CUDAExecutionProvider" else ("cpu", 0)
        e.set_names(self.inputs[0].name, [s.name for s in self.state_specs], [s.name for s in self.outputs])
        self.reset(batch)

    # ------------------------------------------------------------------------- state

    def reset(self, batch: int | None = None) -> None:
        """Start a new stream (M = z = 0, nothing pending) for ``batch`` rows (default: same).

        A fresh stream also adopts the batch of its first input."""
        batch = self.batch if batch is None else batch
        if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch: expected an integer >= 1, got {batch!r}")
        arrays = {s.name: np.zeros(checks.concrete(s.dims, batch, 0), np.dtype(s.dtype)) for s in self.state_specs}
        self._set_arrays(arrays, position=0)
        self._last_logits = None
        self._fresh = True

    @property
    def decode_graph(self) -> bool:
        """Whether calls inside a segment run on the decode graph (engine.py; loaded now if not yet)."""
        return self._engine.decode is not None

    @property
    def pending(self) -> int:
        """n: tokens of the unfinished segment (the next token's offset in its segment)."""
        return self._pending

    @property
    def segments(self) -> int:
        return self._segments

    def state(self) -> dict[str, np.ndarray]:
        """A host copy of the state, keyed by the graph's input names (``past_memory.0.M``, ...).

        Copied: ``OrtValue.numpy()`` of a CPU value can alias ORT's buffer, which ORT reuses once
        the stream moves on."""
        return {name: np.array(value.numpy(), copy=True) for name, value in self._state.items()}

    def set_state(self, arrays: dict, position: int | None = None) -> None:
        """Continue from ``arrays`` (as returned by `state()`); checked against the model first."""
        checks.check_state_arrays(self, arrays)
        self._set_arrays({s.name: arrays[s.name] for s in self.state_specs},
                         position=self._segments_of(arrays) * self.segment_len + self._pending_of(arrays)
                         if position is None else int(position))

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the state OrtValues now (M, z, pending keys/values, counter)."""
        return sum(int(np.prod(v.shape())) * _itemsize(v) for v in self._state.values())

    def save_state(self, path) -> Path:
        """Write the state atomically (a temp file beside it, then os.replace): an interrupted save keeps
        the old file. A symlink is written through (its target is replaced, the link stays); an existing
        file keeps its mode (a new one gets 0o666 & ~umask, as open() gives); temp files that a killed
        earlier save left (``<name>.<pid>.*.tmp`` of a process no longer running) are removed."""
        meta = {"format": STATE_FILE_FORMAT, "model_id": self.model_id, "kind": self.kind,
                "config": self.config.to_dict(), "position": self.position, "batch": self.batch}
        write_state_file(path, self.state(), meta)
        return Path(path)

    def load_state(self, path) -> None:
        """Resume a stream saved by `save_state`: same model only (model_id and config), and proven
        consistent before use (position = segments * N + pending, z >= 0, ...: checks.read_state_file)."""
        arrays, meta = checks.read_state_file(self, path)
        self.set_state(arrays, position=meta["position"])

    # ----------------------------------------------------------------------- running

    def feed(self, chunk, outputs: str = "all"):
        """Run the next tokens (LM: ids (B, T) or (T,) for B = 1) or inputs (layer: x (B, T, D)).

        outputs: "all" -> (B, T, V) logits / (B, T, D) y; "last" -> the last position only
        (B, V) / (B, D); "none" -> None. On any error the state is left as it was before the call.
        """
        if outputs not in ("all", "last", "none"):
            raise ValueError(f"outputs: expected 'all', 'last' or 'none', got {outputs!r}")
        if self._fresh:  # a stream that has seen nothing takes the batch of its first input
            rows = np.shape(chunk)[0] if np.ndim(chunk) >= (2 if self.config.takes_tokens else 3) else 1
            if rows != self.batch and rows >= 1:
                self.reset(rows)
        arr = checks.check_chunk(self, chunk)
        saved = (self._state, self._pending, self._segments, self.position, self._last_logits, self._fresh)
        outs, T = [], arr.shape[1]
        try:
            for a, b in self._calls(T):
                out = self._run_piece(arr[:, a:b])
                if outputs == "all":
                    outs.append(out)
        except BaseException:
            self._state, self._pending, self._segments, self.position, self._last_logits, self._fresh = saved
            raise
        if T and self.config.takes_tokens:
            self._last_logits = out[:, -1]
        if outputs == "none":
            return None
        if outputs == "last":
            return out[:, -1] if T else None
        width = self.config.output_width
        return np.concatenate(outs, axis=1) if outs else np.zeros((self.batch, 0, width), np.float32)

    def generate(self, max_new_tokens: int, prompt=None, *, temperature: float = 0.0, top_k: int | None = None,
                 seed: int | None = None) -> np.ndarray:
        """LM only: feed ``prompt`` (if any), then emit ``max_new_tokens`` tokens (B, max_new_tokens),
        each fed back one call per token. temperature 0: greedy (argmax); > 0: sampled from
        softmax(logits / temperature), restricted to the ``top_k`` best if given."""
        if not self.config.takes_tokens or self.config.output_width > self.config.input_width:
            takes = "token ids" if self.config.takes_tokens else "vectors"
            raise ValueError(f"generate: expected a model that takes token ids and returns logits over them, this "
                             f"file is a {self.kind} model taking {takes} (width {self.config.input_width}) to width "
                             f"{self.config.output_width}")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= self.config.output_width):
            raise ValueError(f"top_k: expected None or an integer in [1, {self.config.output_width}], got {top_k!r}")
        if prompt is not None:
            self.feed(prompt, outputs="none")
        if self._last_logits is None:
            raise ValueError("generate: expected a prompt, or a stream already fed (no logits to start from)")
        rng = np.random.default_rng(seed)
        out = np.zeros((self.batch, max_new_tokens), np.int64)
        for i in range(max_new_tokens):
            out[:, i] = _pick(self._last_logits, temperature, top_k, rng)
            self.feed(out[:, i:i + 1], outputs="none")
        return out

    def end_profiling(self) -> str:
        """Stop ONNX Runtime's profiler (``profile=`` prefix) and return the JSON file it wrote."""
        return self._engine.end_profiling()

    # ---------------------------------------------------------------------- internals

    def _calls(self, T: int) -> list[tuple[int, int]]:
        """(start, stop) of the ONNX calls for T new tokens. One, except: a call that crosses a segment boundary
        after pending tokens first completes that segment (the graph's long form would give the pending
        positions dummy queries, up to a segment's worth of attention), and no call spans more than
        max_call_segments segments; so every call but the last ends on a boundary."""
        N, most = self.segment_len, self.max_call_segments * self.segment_len
        out, start, n = [], 0, self._pending
        while start < T:
            stop = T if n + T - start <= most else start + most - n
            if n and n + stop - start > N:
                stop = start + N - n
            out.append((start, stop))
            n, start = (n + stop - start) % N, stop
        return out

    def _run_piece(self, piece: np.ndarray) -> np.ndarray:
        """One ONNX call: ``piece`` (B, t[, D]), any t >= 1, from the current state."""
        piece = np.ascontiguousarray(piece)  # alive until the call returns: its OrtValue aliases it on CPU
        L = self._pending + piece.shape[1]
        out, self._state = self._engine.run(piece, self._state, inside=L < self.segment_len)
        self._fresh = False
        self._pending, self._segments = L % self.segment_len, self._segments + L // self.segment_len
        self.position += piece.shape[1]
        return np.array(out.numpy(), copy=True)  # owned by the caller, not aliasing ORT's buffer

    def _set_arrays(self, arrays: dict, position: int) -> None:
        # On CPU an OrtValue made from NumPy wraps the array's memory without owning it: keep our own
        # copies alive for as long as these values may be bound (until the next _set_arrays).
        self._host_arrays = {s.name: np.array(arrays[s.name], copy=True, order="C") for s in self.state_specs}
        self._state = {n: self._engine.from_numpy(a) for n, a in self._host_arrays.items()}
        self._pending, self._segments = self._pending_of(arrays), self._segments_of(arrays)
        self.batch = int(np.shape(arrays[self._key0])[0])
        self.position = int(position)
        self._fresh = False

    def _pending_of(self, arrays) -> int:
        return int(np.shape(arrays[self._key0])[2])

    @staticmethod
    def _segments_of(arrays) -> int:
        return int(np.asarray(arrays["past_segments"]))


def _itemsize(value) -> int:
    return {"tensor(float)": 4, "tensor(float16)": 2, "tensor(int64)": 8, "tensor(double)": 8}[value.data_type()]


def _pick(logits: np.ndarray, temperature: float, top_k: int | None, rng) -> np.ndarray:
    """Next token per row from logits (B, V): argmax, or a sample at ``temperature``."""
    logits = logits.astype(np.float64)
    if top_k is not None:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits >= kth, logits, -np.inf)
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits / temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])

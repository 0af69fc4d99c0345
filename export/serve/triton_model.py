"""The Triton Python-backend model that `infini serve triton` copies into a repository as ``1/model.py``.

Triton's sequence batcher (``oldest``) routes each stream's requests by correlation id and hands this model
requests of several streams at once; they run as one ONNX Runtime call of the many-streams export
(`export.pool.StreamPool`, SPEC.md §4.4). The model keeps each stream's state itself (Triton's implicit state
does not reach a Python-backend model), and with a spill directory writes it there (atomically) after every
request, before answering: a response is sent only for committed state, so a restarted server, or another
instance sharing the directory, continues the stream exactly. A request with START and RESUME = 1 takes the
stream up from the spill directory (Triton requires START on a server's first request of a sequence).
END drops the stream and its spilled state; a stream idle longer than the sequence idle timeout is freed.

Inputs: ``input_ids`` (LM, int64 [1, T]) or ``x`` (layer, [1, T, D]); optional ``RESUME`` (int32 [1]); controls
START, END, CORRID. Output: ``logits`` / ``y`` of the chunk ([1, T, V] / [1, T, D]). Errors name the stream.
"""
import json
import site
import time
from pathlib import Path

# The stub's embedded Python ignores PYTHONPATH: the project's environment (site dirs, with their .pth files:
# the editable install included) comes from python_path.txt beside this file, written by `infini serve triton`.
for _dir in Path(__file__).with_name("python_path.txt").read_text().split():
    site.addsitedir(_dir)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        from infini_attention.export.pool import StreamPool

        here = Path(args["model_repository"]) / args["model_version"]
        self.pool = StreamPool(here / params["model_file"], max_chunk=int(params["max_chunk"]),
                               intra_op_threads=int(params.get("intra_op_threads", "0")) or None)
        self.spill = Path(params["spill_dir"]) if params.get("spill_dir") else None
        self.idle_s = int(config["sequence_batching"]["max_sequence_idle_microseconds"]) / 1e6
        self.first = "input_ids" if self.pool.kind == "lm" else "x"
        self.output = "logits" if self.pool.kind == "lm" else "y"
        self.seen: dict = {}  # stream id -> time of its last request

    def execute(self, requests):
        now = time.monotonic()
        self._free_idle(now)
        responses, chunks, ends = [None] * len(requests), {}, []
        for i, req in enumerate(requests):
            try:
                key, chunk, end = self._admit(req)
            except (ValueError, OSError) as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            if key in chunks:  # two requests of one stream in one batch: the sequence batcher never does this
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"stream {key}: expected one request at a time, got two in one batch"))
                continue
            chunks[key], self.seen[key] = (i, chunk), now
            if end:
                ends.append(key)
        if chunks:
            try:
                outs = self.pool.feed({k: c for k, (_, c) in chunks.items()})
                for k in chunks:
                    if self.spill is not None and k not in ends:
                        self.pool.park(k, self.spill / f"{k}.npz", keep=True)  # committed before the answer
            except Exception as exc:  # noqa: BLE001 - the batch fails as one, the streams keep their old state
                outs = {k: exc for k in chunks}
            for k, (i, _) in chunks.items():
                if isinstance(outs[k], Exception):
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"stream {k}: {outs[k]}"))
                else:
                    responses[i] = pb_utils.InferenceResponse([_tensor(self.output, outs[k][None])])
        for k in ends:
            self._forget(k)
        return responses

    def finalize(self):
        self.pool = None

    # -------------------------------------------------------------------- internals

    def _admit(self, req):
        """(stream id, chunk, end flag) of a request, starting or resuming its stream; ValueError otherwise."""
        key = str(_scalar(req, "CORRID"))
        start, end = bool(_scalar(req, "START")), bool(_scalar(req, "END"))
        resume = bool(_scalar(req, "RESUME", 0))
        if start and key in self.pool:
            self.pool.drop(key)
        if start and resume:
            path = self.spill / f"{key}.npz" if self.spill is not None else None
            if path is None or not path.is_file():
                raise ValueError(f"stream {key}: RESUME expected a spilled state in the spill directory, found none"
                                 + ("" if self.spill is not None else " (the model has no spill_dir)"))
            self.pool.resume(path, key)
        elif start:
            self.pool.add(key)
            if self.spill is not None:
                (self.spill / f"{key}.npz").unlink(missing_ok=True)
        elif key not in self.pool:
            raise ValueError(f"stream {key}: unknown stream (freed after idling, or never started): send START")
        tensor = pb_utils.get_input_tensor_by_name(req, self.first)
        if tensor is None:
            raise ValueError(f"stream {key}: expected the input {self.first!r}")
        return key, self.pool.check_chunk(key, _array(tensor)), end

    def _free_idle(self, now: float) -> None:
        for key in [k for k, t in self.seen.items() if now - t > self.idle_s]:
            self.seen.pop(key, None)
            if key in self.pool:
                self.pool.drop(key)  # its spilled state (if any) stays: RESUME takes it up

    def _forget(self, key: str) -> None:
        self.seen.pop(key, None)
        if key in self.pool:
            self.pool.drop(key)
        if self.spill is not None:
            (self.spill / f"{key}.npz").unlink(missing_ok=True)


def _scalar(req, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(req, name)
    if tensor is None:
        if default is None:
            raise ValueError(f"expected the control input {name!r}")
        return default
    value = _array(tensor).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value


# Tensors cross the stub by DLPack, not by its NumPy conversion: the stub is built against NumPy 1's array
# layout and, under NumPy 2, reads an item size of 0 (outputs came back empty).
def _array(tensor) -> np.ndarray:
    return np.from_dlpack(tensor).copy()


def _tensor(name: str, arr: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, _Unversioned(np.ascontiguousarray(arr)))


class _Unversioned:
    """An array's DLPack face as the stub reads it: the unversioned capsule (NumPy 2 hands out a versioned
    one when asked with max_version, which the stub cannot open)."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def __dlpack__(self, *args, **kwargs):
        return self.arr.__dlpack__()

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()

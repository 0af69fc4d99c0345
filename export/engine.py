"""The ONNX Runtime side of `InfiniSession`: its sessions, and one call from a state to the next.

Two sessions over one file: the file's graph, which takes any call, and its *inside* branch on its own
(`compose.inside_model`), which runs the calls that stay inside their segment (decoding; same inputs,
outputs and state, so the state flows between the two). A decoding call so skips the If and the copy of
its branch's feeds (measured: benchmarks/bench_onnx.py). The second session is loaded on the first such
call and holds its own copy of the weights; ``decode_graph=False`` keeps one session.

The state is a dict of ONNX Runtime's own OrtValues (``onnxruntime.capi`` values, not the Python wrappers:
wrapping 17+ outputs per call costs more than a small decoding node). On CPU they go in and come out of
``run_with_ort_values``; on CUDA, outputs are bound to the device with IOBinding, so the state never visits
the host between calls.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from . import checks

_C = ort.capi._pybind_state  # ONNX Runtime's own classes, under the Python wrappers
_CPU = ort.OrtDevice.make("cpu", 0)._get_c_device()


class Engine:
    """``run(piece, state, inside)`` -> (first output as a host OrtValue, the next state). ``device`` and the
    I/O names (``first``, ``state_names``, ``output_names``) are set by the session once it has read the file's
    metadata."""

    def __init__(self, path: Path, options: ort.SessionOptions, providers: list, decode_graph: bool):
        self.sess = checks.load_session(path, options, providers)
        self._load = (path, options, providers) if decode_graph else None  # the decode graph, on first use
        self._decode, self.passed = None, {}
        self.device = ("cpu", 0)
        self.set_names("", [], [])

    @property
    def decode(self):
        """The decode graph's session (or None: off, or the file has no inside branch), loaded on first use: a
        stream of whole segments never pays for it (its memory, a second copy of the weights)."""
        if self._load is not None:
            self._decode, self.passed = _decode_session(*self._load)
            self._load = None
            self.set_names(self.first, self.state_names, self.output_names)  # what it leaves out
        return self._decode

    def run(self, piece, state: dict, inside: bool):
        decode = inside and self.decode is not None
        sess, names = (self._decode, self.decode_names) if decode else (self.sess, self.output_names)
        if self.device[0] == "cpu":
            feeds = dict(state)
            feeds[self.first] = _C.OrtValue.ortvalue_from_numpy(piece, _CPU)  # aliases ``piece`` (kept by the caller)
            values = sess._sess.run_with_ort_values(feeds, names, None)
        else:  # CUDA: outputs bound to the device, so the state never visits the host between calls
            io = sess.io_binding()
            io.bind_cpu_input(self.first, piece)
            for name, value in state.items():
                io.bind_ortvalue_input(name, ort.OrtValue(value))
            io.bind_output(names[0], "cpu")
            for name in names[1:]:
                io.bind_output(name, self.device[0], self.device[1])
            sess.run_with_iobinding(io)
            values = io.get_outputs_as_ortvaluevector()
        values = list(values)  # an OrtValueVector: no slicing
        if not decode:  # outputs 1.. are present_* in the order of the past_* inputs (io_spec.py)
            return values[0], dict(zip(self.state_names, values[1:]))
        out = dict(state)  # what the decode graph passes through stays as it was (compose.inside_model)
        out.update(zip(self.decode_state, values[1:]))
        return values[0], out

    def set_names(self, first: str, state_names: list, output_names: list) -> None:
        """The graph's first input, its state inputs and its outputs (io_spec order)."""
        self.first, self.state_names, self.output_names = first, state_names, output_names
        to_input = dict(zip(output_names[1:], state_names))  # present_* -> past_*
        self.decode_names = [n for n in output_names if n not in self.passed]
        self.decode_state = [to_input[n] for n in self.decode_names[1:]]

    def from_numpy(self, arr):
        """A state value on the session's device (on CPU it aliases ``arr``: keep ``arr`` alive)."""
        return ort.OrtValue.ortvalue_from_numpy(arr, *self.device)._ortvalue

    def end_profiling(self) -> str:
        """Stop the profiler of both sessions; the decode session's events (tagged ``"graph": "decode"`` in
        their args, times moved onto the main session's clock) are appended to the main session's file."""
        main = self.sess.end_profiling()
        if self._decode is None:  # never loaded (or off): nothing of it to merge
            return main
        other = self._decode.end_profiling()
        shift = (self._decode.get_profiling_start_time_ns() - self.sess.get_profiling_start_time_ns()) // 1000
        events = json.loads(Path(main).read_text())
        for e in json.loads(Path(other).read_text()):
            e["ts"] = e.get("ts", 0) + shift
            e.setdefault("args", {})["graph"] = "decode"
            events.append(e)
        Path(main).write_text(json.dumps(events))
        Path(other).unlink()
        return main


def _decode_session(path: Path, options, providers):
    """(A session of the file's inside branch, the outputs it passes through), or (None, {}) for a file not shaped
    by compose.py, or one too large to serialise again: the file's graph then serves every call, as correctly
    and a little slower."""
    import onnx

    from .compose import inside_model

    try:
        model, passed = inside_model(onnx.load(str(path)))
        if model is None:
            return None, {}
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers), passed
    except Exception:  # noqa: BLE001 - any failure leaves the one-session path, which serves every call
        return None, {}

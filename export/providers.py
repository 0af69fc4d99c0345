"""Choosing the ONNX Runtime execution provider: CUDA when it really loads, else CPU, and why.

`onnxruntime-gpu` lists CUDAExecutionProvider whenever it was built with it, even where the
CUDA/cuDNN libraries or the GPU are missing; creating a session then silently falls back to
CPU. So "auto" first probes CUDA on a one-node model (with ORT's logger quieted) and a
session confirms afterwards which provider it got.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_CUDA_OPTIONS = {
    "device_id": 0,
    "arena_extend_strategy": "kSameAsRequested",  # the arena grows only by what is asked: steady memory
    "do_copy_in_default_stream": "1",
}


@dataclass
class ProviderChoice:
    requested: str
    providers: list = field(default_factory=list)  # as passed to InferenceSession
    device_id: int = 0
    reason: str = ""

    def confirm(self, actual: list[str]) -> tuple[str, str]:
        """(provider used, reason) from the session's ``get_providers()``; error if "cuda" did not load."""
        wanted_cuda = any(p == CUDA or (isinstance(p, tuple) and p[0] == CUDA) for p in self.providers)
        if wanted_cuda and actual and actual[0] == CUDA:
            return CUDA, f"CUDAExecutionProvider loaded (device {self.device_id})"
        if wanted_cuda and self.requested == "cuda":
            raise RuntimeError("provider 'cuda': expected CUDAExecutionProvider to load, but ONNX Runtime fell back "
                               f"to {actual}; {_CUDA_HELP}")
        if wanted_cuda:
            return CPU, f"CUDAExecutionProvider did not load for this model ({_CUDA_HELP}); running on CPU"
        return CPU, self.reason


_CUDA_HELP = (f"onnxruntime-gpu {ort.__version__} needs a visible NVIDIA GPU and its CUDA and cuDNN libraries "
              "(see onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements)")


def select_provider(requested: str = "auto", cuda_options: dict | None = None) -> ProviderChoice:
    """Providers for a session: "cpu", "cuda" (must load) or "auto" (CUDA if it loads, else CPU)."""
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"provider: expected 'auto', 'cuda' or 'cpu', got {requested!r}")
    if requested == "cpu":
        return ProviderChoice(requested, [CPU], 0, "CPU requested")
    ok, why = cuda_status()
    if not ok and requested == "cuda":
        raise RuntimeError(f"provider 'cuda': {why}")
    if not ok:
        return ProviderChoice(requested, [CPU], 0, f"{why}; running on CPU")
    options = {**DEFAULT_CUDA_OPTIONS, **(cuda_options or {})}
    return ProviderChoice(requested, [(CUDA, options), CPU], int(options["device_id"]), why)


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(True, reason) when the CUDA provider loads in this process, else (False, why not)."""
    if CUDA not in ort.get_available_providers():
        return False, f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider (install onnxruntime-gpu)"
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ort.set_default_logger_severity(4)  # the failed load logs an error we report ourselves
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
        loaded = sess.get_providers()[0] == CUDA
    except Exception as exc:  # noqa: BLE001 - any failure means "does not load"
        return False, f"CUDAExecutionProvider failed to start: {exc}"
    finally:
        ort.set_default_logger_severity(2)
    if loaded:
        return True, "CUDAExecutionProvider loads"
    return False, f"CUDAExecutionProvider is listed but does not load here: {_CUDA_HELP}"

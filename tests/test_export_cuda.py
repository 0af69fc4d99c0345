"""The CUDA execution provider path: run where CUDAExecutionProvider really loads, skipped elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.export import InfiniSession, cuda_status, export, preset_config, preset_params

CUDA_OK, CUDA_WHY = cuda_status()
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"CUDA provider unavailable: {CUDA_WHY}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = preset_config("tiny")
    path = tmp_path_factory.mktemp("cuda") / "tiny.onnx"
    export(config, preset_params(config, 0), path)
    return path


def test_auto_says_which_provider(tiny):
    sess = InfiniSession(tiny, provider="auto")
    if CUDA_OK:
        assert sess.provider_used == "CUDAExecutionProvider"
    else:
        assert sess.provider_used == "CPUExecutionProvider" and "running on CPU" in sess.provider_reason


@pytest.mark.skipif(CUDA_OK, reason="CUDA loads here: the fallback error cannot be observed")
def test_cuda_requested_but_unavailable_is_an_error(tiny):
    with pytest.raises(RuntimeError, match="provider 'cuda'"):
        InfiniSession(tiny, provider="cuda")


@pytest.mark.cuda
@needs_cuda
def test_cuda_stream_matches_cpu_and_state_stays_on_device(tiny, tmp_path):
    cpu, gpu = InfiniSession(tiny, provider="cpu"), InfiniSession(tiny, provider="cuda")
    assert gpu.provider_used == "CUDAExecutionProvider"
    ids = np.random.default_rng(0).integers(0, 64, (2, 45))
    outs = {}
    for name, sess in (("cpu", cpu), ("cuda", gpu)):
        sess.reset(2)
        outs[name] = np.concatenate([sess.feed(ids[:, :21])] + [sess.feed(ids[:, i:i + 1]) for i in range(21, 45)], 1)
    assert all(v.device_name().lower() == "cuda" for v in gpu._state.values() if v.shape())
    assert_close("logits cuda vs cpu", outs["cuda"], outs["cpu"], "float32")
    for name, arr in gpu.state().items():
        assert_close(name, arr, cpu.state()[name], "float32", STATE_TOLERANCES)
    gpu.save_state(tmp_path / "s.npz")
    again = InfiniSession(tiny, provider="cuda")
    again.load_state(tmp_path / "s.npz")
    np.testing.assert_array_equal(again.feed(ids[:, :3]), gpu.feed(ids[:, :3]))


@pytest.mark.cuda
@needs_cuda
def test_cuda_float16_export_runs(tmp_path):
    config = preset_config("tiny")
    path = tmp_path / "tiny16.onnx"
    export(config, preset_params(config, 0), path, dtype="float16")
    cpu, gpu = InfiniSession(path, provider="cpu"), InfiniSession(path, provider="cuda")
    ids = np.arange(30)[None] % 64
    assert_close("fp16 logits cuda vs cpu", gpu.feed(ids), cpu.feed(ids), "float16")

#!/usr/bin/env bash
# The CUDA check of the ONNX path (issue 10), one script, about 8 minutes on one GPU:
#   1. installs what it needs into .venv-gpu (torch with CUDA, onnxruntime-gpu, this package), unless present;
#   2. exports the `small` LM (opset 23, float32; and --dtype float16: float16 compute, float32 state);
#   3. streams 1M tokens through ONNX Runtime's CUDA provider with the state kept on the GPU (IOBinding with
#      CUDA OrtValues), the CPU provider following the same stream: logits and state compared at checkpoints;
#   4. prints tokens/s, ORT-CUDA vs torch-CUDA (torch_impl's fast layer) for prefill (8 segments per call)
#      and decode (one token per call), and how many graph nodes ran on CUDA versus fell back to the CPU
#      (from ORT's profiler: every node event names its provider).
# Usage: bash benchmarks/gpu_check.sh [TOKENS]      (default 1048576; exit 1 if a comparison fails)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS="${1:-1048576}"
PY="${PYTHON:-python3}"
VENV=.venv-gpu
OUT=artifacts/gpu_check
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, onnxruntime, infini_attention; assert torch.cuda.is_available()" 2>/dev/null; then
    "$VENV/bin/pip" install -q --upgrade pip
    # torch with CUDA first (the default index's Linux wheel carries CUDA), then the package with its ONNX
    # extras (onnxruntime-gpu, onnxscript) at the tested pins; CUDA 13 and cuDNN 9 come as pip wheels too.
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[ort]" -c .ci/constraints.txt
    "$VENV/bin/pip" install -q "onnxruntime-gpu[cuda,cudnn]==1.31.1" -c .ci/constraints.txt  # CUDA/cuDNN wheels
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$VENV/bin/infini" export --preset small -o "$OUT/small.onnx"
"$VENV/bin/infini" export --preset small --dtype float16 -o "$OUT/small16.onnx"

exec "$VENV/bin/python" - "$OUT" "$TOKENS" <<'PYTHON'
import collections, json, sys, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ort.preload_dlls()  # the CUDA/cuDNN libraries of the nvidia-* wheels, before any session
from infini_attention.export import InfiniSession, cuda_status, preset_config, preset_params
from infini_attention.reference.tolerances import OUTPUT_TOLERANCES, STATE_TOLERANCES, compare, tolerance_for
from infini_attention.torch_impl import InfiniTransformerLM

out_dir, TOKENS = Path(sys.argv[1]), int(sys.argv[2])
ok, why = cuda_status()
print(f"CUDA provider: {why}")
if not ok:
    sys.exit(1)
config = preset_config("small")
N, V = config.attn.segment_len, config.vocab_size
CALL, EVERY = 8 * N, 131072  # tokens per call while streaming; checkpoint interval
failures = []


def check(name, actual, expected, table, dtype="float32"):
    r = compare(name, actual, expected, tolerance_for(dtype, table))
    print("   ", r.message())
    if not r.ok:
        failures.append(name)


# --- 1M tokens on CUDA, the CPU provider following; state on the GPU throughout --------------------------
gpu = InfiniSession(out_dir / "small.onnx", provider="cuda")
cpu = InfiniSession(out_dir / "small.onnx", provider="cpu")
assert gpu.provider_used == "CUDAExecutionProvider", gpu.provider_reason
rng = np.random.default_rng(0)
ids = rng.integers(0, V, (1, TOKENS))
t_gpu = t_cpu = 0.0
for start in range(0, TOKENS, CALL):
    chunk = ids[:, start:start + CALL]
    t0 = time.perf_counter(); lg = gpu.feed(chunk, outputs="last"); t_gpu += time.perf_counter() - t0
    t0 = time.perf_counter(); lc = cpu.feed(chunk, outputs="last"); t_cpu += time.perf_counter() - t0
    on_device = all(v.device_name().lower() == "cuda" for v in gpu._state.values() if v.shape())
    if not on_device:
        failures.append("state left the GPU")
    if gpu.position % EVERY == 0 or gpu.position == TOKENS:
        print(f"  at {gpu.position:,} tokens (state on the GPU: {on_device}):")
        check("last logits CUDA vs CPU", lg, lc, OUTPUT_TOLERANCES)
        sg, sc = gpu.state(), cpu.state()
        for name in ("past_memory.0.M", "past_memory.3.z", "past_key_values.3.key"):
            check(f"{name} CUDA vs CPU", sg[name], sc[name], STATE_TOLERANCES)
print(f"streamed {TOKENS:,} tokens in calls of {CALL}: CUDA {TOKENS / t_gpu:,.0f} tokens/s, "
      f"CPU {TOKENS / t_cpu:,.0f} tokens/s")

# --- float16 compute on CUDA, float32 state ------------------------------------------------------------
g16 = InfiniSession(out_dir / "small16.onnx", provider="cuda")
ref = InfiniSession(out_dir / "small.onnx", provider="cpu")
doc = ids[:, :4 * N + 17]
print("float16 compute (state float32) on CUDA vs float32 on CPU:")
check("logits fp16 CUDA vs fp32 CPU", g16.feed(doc), ref.feed(doc), OUTPUT_TOLERANCES, "float16")
assert all(a.dtype == np.float32 for n, a in g16.state().items() if n != "past_segments")

# --- ORT-CUDA vs torch-CUDA: prefill of 8 segments, decode ----------------------------------------------
model = InfiniTransformerLM.from_numpy(config, preset_params(config, 0), dtype=torch.float32, device="cuda",
                                       check_values=False).eval()
tids = torch.as_tensor(ids[:, :12 * N], device="cuda")


def best(fn, repeats=7):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def ort_prefill():
    gpu.reset(1); gpu.feed(ids[:, N:9 * N], outputs="none")


def ort_decode():
    for i in range(9 * N, 9 * N + 128):
        gpu.feed(ids[:, i:i + 1], outputs="last")


with torch.inference_mode():
    def torch_prefill():
        torch_prefill.st = model(tids[:, N:9 * N])[1]

    def torch_decode():
        st = torch_prefill.st
        for i in range(9 * N, 9 * N + 128):
            logits, st = model(tids[:, i:i + 1], st)
            logits[:, -1].cpu()  # the same host copy of the last logits as the session's outputs="last"

    torch_prefill(); torch_decode()
    rows = {"prefill ms/segment": (best(ort_prefill) / 8, best(torch_prefill) / 8),
            "decode ms/token": (best(ort_decode) / 128, best(torch_decode) / 128)}
print("| | ORT CUDA | torch CUDA | torch / ORT |\n|---|---|---|---|")
for name, (o, t) in rows.items():
    print(f"| {name} | {1e3 * o:.3f} | {1e3 * t:.3f} | {t / o:.2f}x |")

# --- which provider ran each node (ORT's profiler) --------------------------------------------------------
prof = InfiniSession(out_dir / "small.onnx", provider="cuda", profile=str(out_dir / "cuda_profile"))
prof.feed(ids[:, :9 * N + 3], outputs="none")  # the chunk branch, then the session's decode graph below
for i in range(9 * N + 3, 9 * N + 40):
    prof.feed(ids[:, i:i + 1], outputs="none")
events = json.loads(Path(prof.end_profiling()).read_text())
nodes = collections.defaultdict(set)
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        nodes[e["args"].get("provider", "?")].add((e["args"].get("op_name"), e["name"]))
for provider, names in sorted(nodes.items()):
    ops = collections.Counter(op for op, _ in names)
    print(f"nodes run by {provider}: {len(names)} ({', '.join(f'{k} {v}' for k, v in ops.most_common(8))})")
cpu_ops = collections.Counter(op for op, _ in nodes.get("CPUExecutionProvider", ()))
print(f"CPU fallback: {sum(cpu_ops.values())} nodes {dict(cpu_ops)} (Shape/size arithmetic on CPU is expected; "
      f"Attention on CPU would mean the CUDA kernel refused it)")
if cpu_ops.get("Attention"):
    failures.append("Attention ran on CPU")
print("FAILED: " + ", ".join(failures) if failures else "all CUDA checks passed")
sys.exit(1 if failures else 0)
PYTHON

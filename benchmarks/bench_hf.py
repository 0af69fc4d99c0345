"""A converted Hugging Face Llama exported and streamed: ONNX Runtime vs PyTorch, agreement and speed.

    OMP_NUM_THREADS=1 python benchmarks/bench_hf.py            # a tiny random LlamaForCausalLM (no download)

1. convert  a small random LlamaConfig (examples/continual: hidden 64, 8 heads / 4 kv heads of 16, 2 layers)
            -> InfiniTransformerLM (torch_impl.hf.lm_from_hf, segment N), random gates in [-2, 2];
2. export   infini_attention.export.export (self-checked against the float64 reference);
3. agree    one stream of --tokens tokens through ONNX Runtime and the float32 PyTorch model side by side, in the
            same calls (prefill calls of 8 segments, then one token per call): max |logit difference| over every
            position, and the largest |logit| for scale;
4. speed    the same process, 1 thread each (ORT intra-op threads, torch.set_num_threads): prefill tokens/s in
            calls of 8 segments, decode ms/token one token per call; best of --repeats interleaved runs, wall
            and this thread's CPU time (bench_onnx._Timer).
Figures are printed and written to artifacts/bench_hf.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench_onnx import _Timer, time_ort, time_torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples/ (a benchmark script, not the package)

PREFILL_SEGMENTS = 8
AGREE_DECODE = 32  # tokens decoded one per call in the agreement check


def main() -> None:
    from examples.continual.finetune import tiny_llama
    from infini_attention.export import InfiniSession, export
    from infini_attention.torch_impl.hf import lm_from_hf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segment-len", type=int, default=64)
    p.add_argument("--tokens", type=int, default=4096, help="stream length of the agreement check")
    p.add_argument("--decode", type=int, default=128, help="tokens decoded one per call (speed)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    N = args.segment_len
    with tempfile.TemporaryDirectory() as tmp:
        model = lm_from_hf(tiny_llama(Path(tmp) / "llama", seed=0), segment_len=N, dtype=torch.float32,
                           beta_init=np.linspace(-2.0, 2.0, 8), check_values=False).eval()
        r = export(model.config, model.numpy_params(), Path(tmp) / "llama.onnx")
        sess = InfiniSession(r.path, provider="cpu", intra_op_threads=1)
        ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, args.tokens))
        agree = agreement(sess, model, ids, PREFILL_SEGMENTS * N)
        speed = timings(sess, model, ids, N, args.decode, args.repeats)
    out = {"command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset"),
                                Path(sys.executable).name, *sys.argv]),
           "config": model.config.to_dict(), "export_seconds": round(r.seconds, 1), "agreement": agree,
           "speed": speed, "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(f"converted tiny Llama: {sum(p.numel() for p in model.parameters()):,} parameters, N = {N}; exported in "
          f"{r.seconds:.1f} s ({len(r.checks)} self-check comparisons passed)")
    print(f"agreement over {args.tokens:,} tokens (calls of {PREFILL_SEGMENTS * N} tokens): max |ORT - PyTorch| "
          f"logits {agree['max_abs_diff']:.2e} (logits up to {agree['max_abs_logit']:.2f}); then greedy decoding "
          f"{AGREE_DECODE} tokens one per call: {agree['decode_max_abs_diff']:.2e}")
    print("| engine | prefill tokens/s (wall / CPU) | decode ms/token (wall / CPU) |\n|---|---|---|")
    for name, row in speed.items():
        print(f"| {name} | {row['prefill_tokens_per_s'][0]:,.0f} / {row['prefill_tokens_per_s'][1]:,.0f} | "
              f"{row['decode_ms_per_token'][0]:.3f} / {row['decode_ms_per_token'][1]:.3f} |")
    path = ROOT / "artifacts" / "bench_hf.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"command: {out['command']}\nwritten {path}")


def agreement(sess, model, ids: np.ndarray, call: int) -> dict:
    """Max |logit difference| of ORT and PyTorch fed the same calls: prefill calls of ``call`` tokens over ids,
    then the greedy continuation (PyTorch's tokens) one per call."""
    sess.reset(1)
    states, worst, scale = None, 0.0, 0.0
    with torch.inference_mode():
        for a in range(0, ids.shape[1], call):
            chunk = ids[:, a:a + call]
            pt, states = model(torch.from_numpy(chunk), states)
            worst = max(worst, float(np.abs(sess.feed(chunk) - pt.numpy()).max()))
            scale = max(scale, float(pt.abs().max()))
        decode = 0.0
        for _ in range(AGREE_DECODE):
            nxt = pt[:, -1:].argmax(-1)
            pt, states = model(nxt, states)
            decode = max(decode, float(np.abs(sess.feed(nxt.numpy()) - pt.numpy()).max()))
    return {"tokens": int(ids.shape[1]), "max_abs_diff": worst, "max_abs_logit": scale, "decode_max_abs_diff": decode}


def timings(sess, model, ids: np.ndarray, N: int, decode: int, repeats: int) -> dict:
    S = PREFILL_SEGMENTS
    start = (S + 1) * N  # one segment first (a non-empty memory), S in one call, then decoding
    tids = torch.from_numpy(ids)
    timers = collections.defaultdict(_Timer)
    for _ in range(repeats):  # interleaved: other processes' load hits both engines alike
        time_ort(sess, ids, N, start, decode, timers, "ORT", S * N)
        time_torch(model, tids, N, start, decode, timers, "PyTorch", S * N)
    rows = {}
    for name in ("ORT", "PyTorch"):
        pre, dec = timers[name, "prefill"].best(), timers[name, "decode"].best()
        rows[name] = {"prefill_tokens_per_s": (1e3 / pre[0], 1e3 / pre[1]), "decode_ms_per_token": dec}
    return rows


if __name__ == "__main__":
    main()

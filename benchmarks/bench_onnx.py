"""ONNX Runtime benchmarks of issue 4: constant memory over a long stream, ORT vs PyTorch, state size.

    python benchmarks/bench_onnx.py            # quick: 256K-token stream (~1 min on 2 cores)
    python benchmarks/bench_onnx.py --full     # the 1M-token stream (a few minutes)

1. stream  the 'small' preset LM through ORT on CPU, in a fresh process that imports no torch
           (`infini stream --json`): tokens/s, peak RSS at 64K tokens and at the end, time per
           segment in the first and last 64K-token windows. Target: peak within 5%, time flat.
2. speed   ORT CPU vs PyTorch eager (torch_impl, float32), same model, same thread count:
           prefill of one whole segment (N tokens) and decode of one token; ratio torch / ORT.
3. state   state bytes vs a full KV cache for the paper's 12-layer model (H = Hkv = 8,
           dk = dv = 128, D = 1024, N = 2048) at 32K, 1M and 10M tokens, from the state
           OrtValues of the exported paper layer (x 12 layers).
Figures are printed and written to artifacts/bench_onnx.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "artifacts" / "bench"


def _export(preset: str, kind: str, check: bool = True) -> Path:
    from infini_attention.export import export, preset_config, preset_params

    path = OUT / f"{preset}-{kind}.onnx"
    if not getattr(_export, "done", set()) >= {path}:  # once per run: never a stale file
        config = preset_config(preset, kind)
        export(config, preset_params(config, 0), path, check=check)
        _export.done = getattr(_export, "done", set()) | {path}
    return path


def bench_stream(tokens: int) -> dict:
    model = _export("small", "lm")
    report = OUT / "stream.json"
    cmd = [sys.executable, "-m", "infini_attention.export.cli", "stream", str(model), "--generate", str(tokens),
           "--provider", "cpu", "--checkpoint-every", "65536", "--no-progress", "--json", str(report)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(report.read_text())
    cps = data["checkpoints"]
    w = data["window_seconds_per_call"]
    out = {"tokens": data["tokens"], "seconds": data["seconds"], "tokens_per_second": data["tokens_per_second"],
           "peak_rss_64k_mib": cps[0]["peak_rss"] / 2**20, "peak_rss_end_mib": cps[-1]["peak_rss"] / 2**20,
           "peak_growth_pct": 100 * (cps[-1]["peak_rss"] / cps[0]["peak_rss"] - 1),
           "ms_per_segment_first_64k": 1e3 * w[0], "ms_per_segment_last_64k": 1e3 * w[-1],
           "ms_per_segment_max_window": 1e3 * max(w), "state_nbytes": data["state_nbytes"]}
    print(f"\n1. stream: 'small' LM, {out['tokens']:,} tokens through ORT CPU in {out['seconds']:.1f} s = "
          f"{out['tokens_per_second']:,.0f} tokens/s")
    print(f"   peak RSS {out['peak_rss_64k_mib']:.1f} MiB at 64K tokens, {out['peak_rss_end_mib']:.1f} MiB at "
          f"{out['tokens']:,} ({out['peak_growth_pct']:+.2f}%, target within 5%)")
    print(f"   time per segment: {out['ms_per_segment_first_64k']:.2f} ms (first 64K), "
          f"{out['ms_per_segment_last_64k']:.2f} ms (last 64K), worst 64K window {out['ms_per_segment_max_window']:.2f}"
          f" ms; state {out['state_nbytes']:,} bytes")
    return out


def bench_speed(segments: int, tokens: int, repeats: int = 5) -> dict:
    import torch

    from infini_attention.export import InfiniSession, preset_config, preset_params
    from infini_attention.torch_impl import InfiniTransformerLM

    config = preset_config("small")
    N = config.attn.segment_len
    sess = InfiniSession(_export("small", "lm"), provider="cpu")
    import inspect

    no_checks = {"check_values": False} if "check_values" in inspect.signature(InfiniTransformerLM).parameters else {}
    model = InfiniTransformerLM.from_numpy(config, preset_params(config, 0), dtype=torch.float32, **no_checks).eval()
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, (segments + 2) * N + tokens + 8))
    tids = torch.as_tensor(ids)

    def ort_prefill():
        sess.reset(1)
        sess.feed(ids[:, :N], outputs="none")  # warm-up segment
        t0 = time.perf_counter()
        for s in range(1, segments + 1):
            sess.feed(ids[:, s * N:(s + 1) * N], outputs="none")
        return (time.perf_counter() - t0) / segments

    def ort_decode():
        start = (segments + 1) * N + 5
        t0 = time.perf_counter()
        for i in range(start, start + tokens):
            sess.feed(ids[:, i:i + 1], outputs="last")
        return (time.perf_counter() - t0) / tokens

    def torch_prefill():
        with torch.inference_mode():
            _, st = model(tids[:, :N])
            t0 = time.perf_counter()
            for s in range(1, segments + 1):
                _, st = model(tids[:, s * N:(s + 1) * N], st)
            torch_prefill.state = st
            return (time.perf_counter() - t0) / segments

    def torch_decode():
        with torch.inference_mode():
            _, st = model(tids[:, (segments + 1) * N:(segments + 1) * N + 5], torch_prefill.state)
            start = (segments + 1) * N + 5
            t0 = time.perf_counter()
            for i in range(start, start + tokens):
                _, st = model(tids[:, i:i + 1], st)
            return (time.perf_counter() - t0) / tokens

    o_pre, o_dec, t_pre, t_dec = [], [], [], []
    for _ in range(repeats):  # interleaved, best of: other processes' load hits both alike
        o_pre.append(ort_prefill())
        t_pre.append(torch_prefill())
        o_dec.append(ort_decode())
        t_dec.append(torch_decode())
    out = {"threads_torch": torch.get_num_threads(), "segment_len": N,
           "ort_prefill_ms_per_segment": 1e3 * min(o_pre), "torch_prefill_ms_per_segment": 1e3 * min(t_pre),
           "ort_decode_ms_per_token": 1e3 * min(o_dec), "torch_decode_ms_per_token": 1e3 * min(t_dec)}
    out["prefill_speedup"] = out["torch_prefill_ms_per_segment"] / out["ort_prefill_ms_per_segment"]
    out["decode_speedup"] = out["torch_decode_ms_per_token"] / out["ort_decode_ms_per_token"]
    print(f"\n2. speed: 'small' LM, float32, batch 1, CPU ({out['threads_torch']} torch threads; ORT: InfiniSession "
          f"defaults, no thread spinning); best of {repeats}, interleaved")
    print("   | | ORT CPU | PyTorch eager | PyTorch / ORT |\n   |---|---|---|---|")
    print(f"   | prefill, ms per segment (N={N}) | {out['ort_prefill_ms_per_segment']:.2f} | "
          f"{out['torch_prefill_ms_per_segment']:.2f} | {out['prefill_speedup']:.2f}x |")
    print(f"   | decode, ms per token | {out['ort_decode_ms_per_token']:.3f} | {out['torch_decode_ms_per_token']:.3f} | "
          f"{out['decode_speedup']:.2f}x |")
    return out


def bench_state_size() -> dict:
    from infini_attention.export import InfiniSession, preset_config

    lm = preset_config("paper")
    a = lm.attn
    sess = InfiniSession(_export("paper", "layer", check=False), provider="cpu")
    empty = sess.state_nbytes  # M, z, counter; nothing pending
    sess.feed(np.zeros((1, a.segment_len - 1, a.d_model), np.float32), outputs="none")
    full = sess.state_nbytes  # the most pending keys/values a state ever holds (n = N - 1)
    counter = 8  # past_segments (int64) is shared by all layers of an LM
    layers = lm.n_layers
    state_min, state_max = layers * (empty - counter) + counter, layers * (full - counter) + counter
    kv_per_token = layers * 2 * a.n_kv_heads * a.d_key * 4  # float32 keys and values, every layer
    rows = []
    print(f"\n3. state size, the paper's model: {layers} layers, H = Hkv = {a.n_heads}, dk = dv = {a.d_key}, "
          f"D = {a.d_model}, N = {a.segment_len}, float32 (from the exported layer's state OrtValues x {layers})")
    print("   | tokens | full KV cache | Infini state (n = 0) | Infini state (n = N-1, worst) | KV / state (n = 0) |")
    print("   |---|---|---|---|---|")
    for T in (32 * 1024, 2**20, 10 * 2**20):
        kv = T * kv_per_token
        rows.append({"tokens": T, "kv_cache_bytes": kv, "state_bytes_min": state_min, "state_bytes_max": state_max})
        print(f"   | {T:,} | {_fmt(kv)} | {_fmt(state_min)} | {_fmt(state_max)} | {kv / state_min:,.0f}x |")
    mem_values = layers * a.n_kv_heads * a.d_key * (a.d_value + 1)
    print(f"   M and z alone: {mem_values:,} values (the paper's 128 x 129 x 8 x 12 = 1.6M); the pending keys and "
          f"values of the unfinished segment add up to {_fmt(state_max - state_min)}")
    return {"per_layer_state_bytes_n0": empty - counter, "per_layer_state_bytes_nmax": full - counter, "rows": rows}


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="stream 1M tokens and time more segments/tokens")
    p.add_argument("--tokens", type=int, help="stream length (default 262144 quick, 1048576 full)")
    p.add_argument("--skip", nargs="*", default=[], choices=["stream", "speed", "state"])
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"mode": "full" if args.full else "quick", "cpu_count": os.cpu_count()}
    if "stream" not in args.skip:
        results["stream"] = bench_stream(args.tokens or (2**20 if args.full else 2**18))
    if "speed" not in args.skip:
        results["speed"] = bench_speed(*((16, 512) if args.full else (6, 128)))
    if "state" not in args.skip:
        results["state"] = bench_state_size()
    path = ROOT / "artifacts" / "bench_onnx.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()

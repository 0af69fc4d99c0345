"""ONNX Runtime benchmarks: constant memory over a long stream, ORT vs PyTorch, state size.

    python benchmarks/bench_onnx.py                      # quick: 256K-token stream, speed at 1 and 2 threads
    python benchmarks/bench_onnx.py --full               # the 1M-token stream, more repeats
    python benchmarks/bench_onnx.py --skip stream state --profile   # speed only, with ORT's profiler

1. stream  the 'small' preset LM through ORT on CPU, in a fresh process that imports no torch
           (`infini stream --json`): tokens/s, peak RSS at 64K tokens and at the end, time per
           call in the first and last 64K-token windows. Target: peak within 5%, time flat.
2. speed   ORT CPU vs PyTorch eager (torch_impl's fast layer, float32), the same model, side by side in
           this process, with 1 and then 2 threads each (ORT intra-op threads, torch.set_num_threads):
           prefill of 8 segments in one call (ms per segment) and decoding one token per call (ms per
           token; InfiniSession's decode graph), for each exported file (opset 23 with the Attention op,
           opset 17 with MatMul/Softmax); best of interleaved repeats, wall time and the process's CPU
           time (all its threads: what the engines cost when other processes share the CPU). Then the
           prefill's dense GEMMs and local attention alone at their exact shapes (profile_onnx.py
           kernel_floor), and the most any engine with those kernels could gain on PyTorch eager.
           Targets: prefill >= 1.5x, decode >= 3x. --profile: per-op time shares of ORT (enable_profiling)
           and PyTorch eager (torch.profiler), at one thread.
3. state   state bytes vs a full KV cache for the paper's 12-layer model (H = Hkv = 8,
           dk = dv = 128, D = 1024, N = 2048) at 32K, 1M and 10M tokens, from the state
           OrtValues of the exported paper layer (x 12 layers).
Figures are printed and written to artifacts/bench_onnx.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # profile_onnx.py beside this file
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "artifacts" / "bench"
PREFILL_SEGMENTS = 8


def _export(preset: str, kind: str, check: bool = True, opset: int = 23) -> Path:
    from infini_attention.export import export, preset_config, preset_params

    path = OUT / f"{preset}-{kind}-opset{opset}.onnx"
    if not getattr(_export, "done", set()) >= {path}:  # once per run: never a stale file
        config = preset_config(preset, kind)
        export(config, preset_params(config, 0), path, check=check, opset=opset)
        _export.done = getattr(_export, "done", set()) | {path}
    return path


def bench_stream(tokens: int) -> dict:
    model = _export("small", "lm")
    report = OUT / "stream.json"
    cmd = [sys.executable, "-m", "infini_attention.export.cli", "stream", str(model), "--generate", str(tokens),
           "--provider", "cpu", "--checkpoint-every", "65536", "--no-progress", "--json", str(report)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(report.read_text())
    cps, w = data["checkpoints"], data["window_seconds_per_call"]
    out = {"command": " ".join(cmd[1:]), "tokens": data["tokens"], "seconds": data["seconds"],
           "tokens_per_second": data["tokens_per_second"],
           "peak_rss_64k_mib": cps[0]["peak_rss"] / 2**20, "peak_rss_end_mib": cps[-1]["peak_rss"] / 2**20,
           "peak_growth_pct": 100 * (cps[-1]["peak_rss"] / cps[0]["peak_rss"] - 1),
           "ms_per_call_first_64k": 1e3 * w[0], "ms_per_call_last_64k": 1e3 * w[-1],
           "ms_per_call_max_window": 1e3 * max(w), "state_nbytes": data["state_nbytes"]}
    print(f"\n1. stream: 'small' LM, {out['tokens']:,} tokens through ORT CPU in {out['seconds']:.1f} s = "
          f"{out['tokens_per_second']:,.0f} tokens/s (calls of one segment)\n   command: {out['command']}")
    print(f"   peak RSS {out['peak_rss_64k_mib']:.1f} MiB at 64K tokens, {out['peak_rss_end_mib']:.1f} MiB at "
          f"{out['tokens']:,} ({out['peak_growth_pct']:+.2f}%, target within 5%)")
    print(f"   time per call: {out['ms_per_call_first_64k']:.2f} ms (first 64K), {out['ms_per_call_last_64k']:.2f} ms "
          f"(last 64K), worst 64K window {out['ms_per_call_max_window']:.2f} ms; state {out['state_nbytes']:,} bytes")
    return out


class _Timer:
    """Best-of wall and CPU seconds (this process, all its threads) per unit of a timed block."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def run(self, fn, units: int):
        w, c = time.perf_counter(), time.process_time()
        fn()
        self.wall.append((time.perf_counter() - w) / units)
        self.cpu.append((time.process_time() - c) / units)

    def best(self):
        return 1e3 * min(self.wall), 1e3 * min(self.cpu)


def time_ort(sess, ids, N: int, start: int, decode_tokens: int, timers, name: str, units: int) -> None:
    """One timed run of an InfiniSession: one segment first (so the prefill reads a non-empty memory), the prefill
    ids[:, N:start] in one call (per ``units``), then ``decode_tokens`` one per call."""
    sess.reset(1)
    sess.feed(ids[:, :N], outputs="none")
    timers[name, "prefill"].run(lambda: sess.feed(ids[:, N:start], outputs="none"), units)
    timers[name, "decode"].run(lambda: [sess.feed(ids[:, i:i + 1], outputs="last")
                                        for i in range(start, start + decode_tokens)], decode_tokens)


def time_torch(model, tids, N: int, start: int, decode_tokens: int, timers, name: str, units: int) -> None:
    """`time_ort` for the PyTorch model (eager, inference mode)."""
    import torch

    with torch.inference_mode():
        box = {"st": model(tids[:, :N])[1]}
        timers[name, "prefill"].run(lambda: box.update(st=model(tids[:, N:start], box["st"])[1]), units)

        def decode():
            s = box["st"]
            for i in range(start, start + decode_tokens):
                _, s = model(tids[:, i:i + 1], s)

        timers[name, "decode"].run(decode, decode_tokens)


def bench_speed(threads: int, repeats: int, decode_tokens: int, files: dict) -> dict:
    import torch

    from infini_attention.export import InfiniSession, preset_config, preset_params
    from infini_attention.torch_impl import InfiniTransformerLM

    torch.set_num_threads(threads)
    config = preset_config("small")
    N, S = config.attn.segment_len, PREFILL_SEGMENTS
    model = InfiniTransformerLM.from_numpy(config, preset_params(config, 0), dtype=torch.float32,
                                           check_values=False).eval()
    sessions = {name: InfiniSession(path, provider="cpu", intra_op_threads=threads) for name, path in files.items()}
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, (S + 1) * N + decode_tokens))
    tids = torch.as_tensor(ids)
    timers = collections.defaultdict(_Timer)
    start = (S + 1) * N  # decoding starts on a segment boundary: n runs 0 .. decode_tokens - 1

    for _ in range(repeats):  # interleaved: other processes' load hits every engine alike
        for name, sess in sessions.items():
            time_ort(sess, ids, N, start, decode_tokens, timers, name, S)
        time_torch(model, tids, N, start, decode_tokens, timers, "torch", S)
    t_pre, t_dec = timers["torch", "prefill"].best(), timers["torch", "decode"].best()
    rows = {"torch": {"prefill_ms_per_segment": t_pre, "decode_ms_per_token": t_dec}}
    print(f"\n2. speed, {threads} thread(s) each: 'small' LM, float32, batch 1, CPU; prefill of {S} segments "
          f"(N={N}) in one call, then {decode_tokens} tokens decoded one per call; best of {repeats}, interleaved")
    print("   | engine | prefill ms/segment (wall / CPU) | x PyTorch | decode ms/token (wall / CPU) | x PyTorch |")
    print("   |---|---|---|---|---|")
    print(f"   | PyTorch eager | {t_pre[0]:.2f} / {t_pre[1]:.2f} | 1 | {t_dec[0]:.3f} / {t_dec[1]:.3f} | 1 |")
    for name in sessions:
        pre, dec = timers[name, "prefill"].best(), timers[name, "decode"].best()
        rows[name] = {"prefill_ms_per_segment": pre, "decode_ms_per_token": dec,
                      "prefill_speedup_wall": t_pre[0] / pre[0], "prefill_speedup_cpu": t_pre[1] / pre[1],
                      "decode_speedup_wall": t_dec[0] / dec[0], "decode_speedup_cpu": t_dec[1] / dec[1]}
        r = rows[name]
        print(f"   | ORT {name} | {pre[0]:.2f} / {pre[1]:.2f} | {r['prefill_speedup_wall']:.2f}x / "
              f"{r['prefill_speedup_cpu']:.2f}x | {dec[0]:.3f} / {dec[1]:.3f} | {r['decode_speedup_wall']:.2f}x / "
              f"{r['decode_speedup_cpu']:.2f}x |")
    from profile_onnx import kernel_floor

    floor = kernel_floor(config, threads, S)
    bound = t_pre[1] / (floor["gemm_ms_per_segment"] + floor["sdpa_ms_per_segment"])
    bound_ort = t_pre[1] / (floor["ort_gemm_ms_per_segment"] + floor["ort_attention_by_parts_ms_per_segment"])
    print(f"   PyTorch eager prefill (CPU) / (GEMMs + local attention alone) = {bound:.2f}x with PyTorch's kernels, "
          f"{bound_ort:.2f}x with ORT's (MatMul, Attention op as exported): the most an engine with those kernels "
          "could gain if everything else (memory, RoPE, norms, gate, activations, layout) cost nothing")
    return {"threads": threads, "repeats": repeats, "load_average": os.getloadavg(), "rows": rows,
            "kernels_alone": floor, "prefill_bound_vs_torch_sdpa": bound, "prefill_bound_vs_torch_ort_attention":
            bound_ort}


def node_counts(files: dict) -> dict:
    import onnx

    from infini_attention.export.compose import node_counts as count

    from infini_attention.export.compose import inside_model

    out = {}
    for name, path in files.items():
        model = onnx.load(str(path))
        out[name] = dict(count(model), decode_graph=len(inside_model(model)[0].graph.node))
    print("\n   graph nodes (If branches; a Scan body counted in its branch):")
    for name, c in out.items():
        print(f"   - {name}: decode (inside a segment) {c['inside']} ({c['decode_graph']} in the session's decode "
              f"graph), ending on a boundary {c['piece']}, prefill (chunk) {c['chunk']}; {c['total']} in all")
    return out


def profile(files: dict, decode_tokens: int) -> dict:
    """Per-op time shares of ORT and PyTorch eager, and the dense GEMMs and local attention alone
    (benchmarks/profile_onnx.py), at 1 thread."""
    import torch

    from infini_attention.export import preset_config, preset_params
    from infini_attention.torch_impl import InfiniTransformerLM
    from profile_onnx import kernel_floor, ort_profile, torch_profile

    config = preset_config("small")
    N = config.attn.segment_len
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (1, (PREFILL_SEGMENTS + 1) * N + decode_tokens))
    print("\n   profiles, 1 thread, per call (profilers slow every op: read the shares)")
    out = {name: ort_profile(path, ids, N, PREFILL_SEGMENTS, decode_tokens,
                             str(OUT / f"profile-{name.replace(' ', '')}"), name) for name, path in files.items()}
    torch.set_num_threads(1)
    model = InfiniTransformerLM.from_numpy(config, preset_params(config, 0), dtype=torch.float32,
                                           check_values=False).eval()
    out["torch"] = torch_profile(model, torch.as_tensor(ids), N, PREFILL_SEGMENTS, decode_tokens)
    out["kernels_alone"] = kernel_floor(config, 1, PREFILL_SEGMENTS)
    return out


def bench_state_size() -> dict:
    from infini_attention.export import InfiniSession, preset_config

    lm = preset_config("paper")
    a = lm.attn
    sess = InfiniSession(_export("paper", "layer", check=False), provider="cpu")
    empty = sess.state_nbytes  # M, z, counter; nothing pending
    sess.feed(np.zeros((1, a.segment_len - 1, a.d_model), np.float32), outputs="none")
    full = sess.state_nbytes  # the most pending keys/values a state ever holds (n = N - 1)
    counter, layers = 8, lm.n_layers  # past_segments (int64) is shared by all layers of an LM
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
    print(f"   M and z alone: {layers * a.n_kv_heads * a.d_key * (a.d_value + 1):,} values (the paper's 128 x 129 x 8 x "
          f"12 = 1.6M); the pending keys and values of the unfinished segment add up to {_fmt(state_max - state_min)}")
    return {"per_layer_state_bytes_n0": empty - counter, "per_layer_state_bytes_nmax": full - counter, "rows": rows}


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="stream 1M tokens and repeat the speed runs more")
    p.add_argument("--tokens", type=int, help="stream length (default 262144 quick, 1048576 full)")
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2], help="thread counts of the speed runs")
    p.add_argument("--profile", action="store_true", help="also run ORT's profiler (per op type)")
    p.add_argument("--skip", nargs="*", default=[], choices=["stream", "speed", "state"])
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"mode": "full" if args.full else "quick", "cpu_count": os.cpu_count(),
               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if "stream" not in args.skip:
        results["stream"] = bench_stream(args.tokens or (2**20 if args.full else 2**18))
    if "speed" not in args.skip:
        files = {"opset 23": _export("small", "lm"), "opset 17": _export("small", "lm", opset=17)}
        repeats, decode_tokens = (9, 256) if args.full else (5, 128)
        results["speed"] = [bench_speed(t, repeats, decode_tokens, files) for t in args.threads]
        results["nodes"] = node_counts(files)
        if args.profile:
            results["profile"] = profile(files, decode_tokens)
    if "state" not in args.skip:
        results["state"] = bench_state_size()
    path = ROOT / "artifacts" / "bench_onnx.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\ncommand: {results['command']}\nwritten {path}")


if __name__ == "__main__":
    main()

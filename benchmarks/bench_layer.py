"""Throughput of one InfiniAttention layer (torch_impl) on this machine's CPU.

(a) this machine's float32 matmul peak, then one segment forward of the layer
    (D=1024, H=Hkv=8, dk=dv=128, N=2048, B=1, float32, inference_mode): achieved GFLOP/s
    and fraction of peak, with a per-part breakdown (projections, local attention, rest);
(b) per-token cost against stream length T for Infini-attention (one call, T/N segments)
    and full causal attention (SDPA over all T, same heads and projections).

Run from the repository root:  .venv/bin/python benchmarks/bench_layer.py [--full] [--threads K]
Timings are the best of --repeats runs after a warm-up; the machine's load average is
printed because other processes on the cores distort CPU timings badly.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shlex
import sys
import time

import torch
import torch.nn.functional as F

from infini_attention.reference import InfiniConfig
from infini_attention.torch_impl import InfiniAttention


def best_times(fns: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Best time of each function over `rounds` rounds that run them in turn, so that all
    of them get the same chances at the quiet moments of a shared machine."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def keep_freed_memory() -> bool:
    """Stop glibc malloc from handing large freed blocks back to the OS.

    By default every tensor above ~32 MB is a fresh mmap, and touching it page-faults
    (~14 faults per token at T = 32K): a cost of the allocator, not of the layer, that
    jemalloc/tcmalloc (the usual advice for PyTorch on CPU) avoid. Applies to both sides
    of every comparison here; --system-malloc turns it off."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 62))


def layer_flops(c: InfiniConfig, T: int) -> dict[str, float]:
    """Multiply-adds x2 of one call over T tokens starting on a segment boundary.

    Causal attention counts only the visible (query, key) pairs: N(N+1)/2 per full segment."""
    D, H, Hkv, dk, dv, N = c.d_model, c.n_heads, c.n_kv_heads, c.d_key, c.d_value, c.segment_len
    full, rest = divmod(T, N)
    pairs = full * N * (N + 1) // 2 + rest * (rest + 1) // 2
    return {
        "projections": 2 * T * D * (H * dk + Hkv * dk + Hkv * dv) + 2 * T * H * dv * D,
        "local attention": 2 * pairs * H * (dk + dv),
        "memory read": 2 * T * H * dk * (dv + 1),  # numerator and denominator
        "memory write": 2 * full * N * Hkv * dk * dv + full * N * Hkv * dk,
    }


def full_attention(x, wq, wk, wv, wo, c: InfiniConfig):
    """Plain causal multi-head attention over all T tokens, same projections as the layer."""
    B, T, _ = x.shape
    q = (x @ wq).view(B, T, c.n_heads, c.d_key).transpose(1, 2)  # (B, H, T, dk)
    k = (x @ wk).view(B, T, c.n_kv_heads, c.d_key).transpose(1, 2)  # (B, Hkv, T, dk)
    v = (x @ wv).view(B, T, c.n_kv_heads, c.d_value).transpose(1, 2)  # (B, Hkv, T, dv)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=c.n_heads != c.n_kv_heads)
    return a.transpose(1, 2).reshape(B, T, -1) @ wo  # (B, T, H*dv) @ (H*dv, D)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="T up to 64K (default: up to 32K)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rope", action="store_true", help="enable RoPE (theta 1e4) in the layer")
    ap.add_argument("--update", default="linear", choices=["linear", "delta"])
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc malloc's defaults alone")
    args = ap.parse_args(argv)
    print("command:", shlex.join([".venv/bin/python", "benchmarks/bench_layer.py", *sys.argv[1:]]))
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "glibc defaults" if args.system_malloc else (
        "glibc, freed memory kept (mallopt)" if keep_freed_memory() else "glibc defaults (mallopt failed)")
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {threads} torch threads, load average {load:.2f}, malloc: {malloc}")
    if load > 0.5:
        print(f"WARNING: load average {load:.2f}: other processes share the cores; timings are pessimistic "
              "(--threads 1 suffers less from it)")
    torch.manual_seed(0)
    c = InfiniConfig(d_model=1024, n_heads=8, n_kv_heads=8, d_key=128, d_value=128, segment_len=2048,
                     update=args.update, rope_theta=1e4 if args.rope else None)
    layer = InfiniAttention(c, dtype=torch.float32).eval()
    N = c.segment_len

    with torch.inference_mode():
        # ------------------------------------------------------------ (a) one segment
        rounds = 3 * args.repeats + 1
        x = torch.randn(1, N, c.d_model)
        mats = {s: (torch.randn(s, s), torch.randn(s, s), torch.empty(s, s)) for s in (1024, 2048, 4096)}
        a_heads = torch.randn(1, N, c.n_heads * c.d_value)
        q = torch.randn(1, N, c.n_heads, c.d_key).transpose(1, 2)  # (B, H, N, dk), the layer's strides
        k = torch.randn(1, N, c.n_kv_heads, c.d_key).transpose(1, 2)
        v = torch.randn(1, N, c.n_kv_heads, c.d_value).transpose(1, 2)
        fns = {f"mm{s}": (lambda m=m: torch.mm(m[0], m[1], out=m[2])) for s, m in mats.items()}
        fns["layer"] = lambda: layer(x)
        # the big kernels of one segment alone: the 4 projections and the causal SDPA
        fns["projections"] = lambda: (x @ layer.wq, x @ layer.wk, x @ layer.wv, a_heads @ layer.wo)
        fns["local attention"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        best = best_times(fns, rounds, warmup=2)
        peak, size = max((2 * s**3 / best[f"mm{s}"] / 1e9, s) for s in mats)
        print(f"\n(a) float32 matmul peak (square 1024/2048/4096, best of {rounds}): "
              f"{peak:.1f} GFLOP/s (at {size}^3)")
        t = best["layer"]
        fl = layer_flops(c, N)
        total = sum(fl.values())
        print(f"one segment forward, {c}: B=1, T=N={N}, float32, best of {rounds} (interleaved with the above)")
        print(f"  time {t * 1e3:.1f} ms, {total / 1e9:.2f} GFLOP -> {total / t / 1e9:.1f} GFLOP/s "
              f"= {total / t / 1e9 / peak:.2f} of matmul peak")
        rest = "rest (memory, gate, sigma, checks)"
        parts = {"projections": best["projections"], "local attention": best["local attention"]}
        parts[rest] = max(t - sum(parts.values()), 0.0)
        fl_parts = {"projections": fl["projections"], "local attention": fl["local attention"],
                    rest: fl["memory read"] + fl["memory write"]}
        for name, pt in parts.items():
            print(f"  {name:38s} {pt * 1e3:7.1f} ms  {fl_parts[name] / 1e9:6.2f} GFLOP  "
                  f"{fl_parts[name] / max(pt, 1e-9) / 1e9:7.1f} GFLOP/s")
        del mats

        # --------------------------------------------------------- (b) cost against T
        lengths = [2048, 4096, 8192, 16384, 32768] + ([65536] if args.full else [])
        print(f"\n(b) per-token cost against stream length (best of {args.repeats}, B=1, float32)")
        print(f"{'T':>7} {'infini us/tok':>14} {'full us/tok':>12} {'full/infini':>11} "
              f"{'infini state MB':>16} {'full KV cache MB':>17}")
        state_mb = (c.n_kv_heads * c.d_key * (c.d_value + 1) + c.n_kv_heads * (N - 1) * (c.d_key + c.d_value)) * 4 / 2**20
        for T in lengths:
            x = torch.randn(1, T, c.d_model)
            reps = args.repeats if T <= 16384 else max(1, args.repeats - 1)
            bt = best_times({"infini": lambda: layer(x),
                             "full": lambda: full_attention(x, layer.wq, layer.wk, layer.wv, layer.wo, c)}, reps)
            ti, tf = bt["infini"], bt["full"]
            kv_mb = T * c.n_kv_heads * (c.d_key + c.d_value) * 4 / 2**20
            print(f"{T:>7} {ti / T * 1e6:>14.1f} {tf / T * 1e6:>12.1f} {tf / ti:>11.2f} "
                  f"{state_mb:>16.1f} {kv_mb:>17.1f}", flush=True)
        print("infini state MB: M, z and at most N-1 pending keys/values (its maximum); "
              "full KV cache MB: what full attention keeps for T tokens")

        # ------------------------------------------------------- (c) token-by-token decode
        print(f"\n(c) decode, one token per call (ms/token, mean of 20 chained calls, best of {args.repeats}):")
        x = torch.randn(1, N + N // 2 + 1, c.d_model)
        _, st_half = layer(x[:, :N + N // 2])  # 1 segment done, n = N/2 pending
        tok = x[:, -1:]

        def infini20():
            s = st_half  # each repeat continues the same state (a branch: its first call copies)
            for _ in range(20):
                _, s = layer(tok, s)

        def full20(kc, vc):
            for _ in range(20):
                q = (tok @ layer.wq).view(1, 1, c.n_heads, c.d_key).transpose(1, 2)  # (1, H, 1, dk)
                _k, _v = tok @ layer.wk, tok @ layer.wv  # the new token's k, v (cache append not timed)
                a = F.scaled_dot_product_attention(q, kc, vc, enable_gqa=c.n_heads != c.n_kv_heads)
                a.transpose(1, 2).reshape(1, 1, -1) @ layer.wo

        print(f"{'context T':>9} {'infini (n = N/2 pending)':>25} {'full, KV cache of T':>20}")
        for T in lengths:
            kc = torch.randn(1, c.n_kv_heads, T, c.d_key)  # (B, Hkv, T, dk) KV cache
            vc = torch.randn(1, c.n_kv_heads, T, c.d_value)
            bt = best_times({"infini": infini20, "full": lambda: full20(kc, vc)}, args.repeats)
            print(f"{T:>9} {bt['infini'] / 20 * 1e3:>25.2f} {bt['full'] / 20 * 1e3:>20.2f}", flush=True)


if __name__ == "__main__":
    main()

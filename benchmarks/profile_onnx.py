"""Where the time goes, for benchmarks/bench_onnx.py --profile: per-op time shares of ORT (its profiler,
``enable_profiling``) and of PyTorch eager (torch.profiler), and the time of the model's dense GEMMs and of its
local attention alone at the exact shapes, in this process (what any engine doing the same FLOPs pays).

Profilers add overhead to every op, so shares are what to read here, not totals (bench_onnx.py's speed
table has the totals). A kernel's figure is the median over the calls it ran in (the machine is shared:
a preempted kernel would otherwise count whole).
"""
from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import numpy as np


def _shares(us_by_op: dict, top: int = 10) -> list[tuple[str, float, float]]:
    total = sum(us_by_op.values()) or 1.0
    return [(op, us, 100 * us / total) for op, us in sorted(us_by_op.items(), key=lambda kv: -kv[1])[:top]]


def _line(name: str, rows, unit_ms: bool) -> str:
    fmt = (lambda us: f"{us / 1e3:.2f} ms") if unit_ms else (lambda us: f"{us:.0f} us")
    return f"   {name}: " + ", ".join(f"{op} {fmt(us)} ({pct:.0f}%)" for op, us, pct in rows)


def ort_profile(path, ids, N: int, segments: int, decode_tokens: int, prefix: str, label: str) -> dict:
    """ORT CPU, one thread: one prefill call of ``segments`` segments (after one segment), then decoding;
    microseconds per call by op type (If excluded: its time is its branch's nodes)."""
    from infini_attention.export import InfiniSession

    start = (segments + 1) * N
    out = {}
    for mode in ("prefill", "decode"):
        sess = InfiniSession(path, provider="cpu", intra_op_threads=1, profile=f"{prefix}-{mode}")
        sess.feed(ids[:, :N], outputs="none")  # warm-up, left out below
        t0 = time.monotonic_ns()
        calls = 3 if mode == "prefill" else decode_tokens
        if mode == "prefill":
            for _ in range(calls):
                sess.reset(1)
                sess.feed(ids[:, :N], outputs="none")
                sess.feed(ids[:, N:start], outputs="none")
        else:
            sess.feed(ids[:, N:start], outputs="none")
            for i in range(start, start + decode_tokens):
                sess.feed(ids[:, i:i + 1], outputs="last")
        events = json.loads(Path(sess.end_profiling()).read_text())
        skip = (t0 - sess._sess.get_profiling_start_time_ns()) // 1000
        runs = sorted((e for e in events if e.get("name") == "model_run" and e["ts"] > skip), key=lambda e: e["ts"])
        # prefill: the longest call of each reset .. feed pair; decode: the last calls (of the decode graph)
        runs = sorted(runs, key=lambda e: -e["dur"])[:calls] if mode == "prefill" else runs[-calls:]
        spans = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
        durs, op_of, kernels = collections.defaultdict(list), {}, 0
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name") != "If" \
                    and any(a <= e["ts"] <= b for a, b in spans):
                durs[e["name"]].append(e["dur"])
                op_of[e["name"]] = e["args"].get("op_name")
                kernels += 1
        by_op = collections.Counter()
        for name, d in durs.items():
            by_op[op_of[name]] += float(np.median(d)) * len(d) / calls
        out[mode] = {"kernels_per_call": kernels / calls, "us_per_call_by_op": dict(by_op),
                     "shares": _shares(by_op)}
        print(_line(f"ORT {label} {mode} ({kernels / calls:.0f} kernels per call)", out[mode]["shares"],
                    mode == "prefill"))
    return out


def torch_profile(model, tids, N: int, segments: int, decode_tokens: int) -> dict:
    """PyTorch eager, the same calls, self CPU time per aten op (per call)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    start = (segments + 1) * N
    out = {}
    with torch.inference_mode():
        _, st = model(tids[:, :N])
        model(tids[:, N:start], st)  # warm-up
        for mode in ("prefill", "decode"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                if mode == "prefill":
                    for _ in range(3):
                        model(tids[:, N:start], st)
                else:
                    _, s = model(tids[:, N:start], st)
                    for i in range(start, start + decode_tokens):
                        _, s = model(tids[:, i:i + 1], s)
            calls = 3 if mode == "prefill" else decode_tokens
            by_op = {e.key: e.self_cpu_time_total / calls for e in prof.key_averages()}
            out[mode] = {"us_per_call_by_op": by_op, "shares": _shares(by_op)}
            print(_line(f"PyTorch {mode}", out[mode]["shares"], mode == "prefill"))
    return out


def kernel_floor(config, threads: int, segments: int, repeats: int = 7) -> dict:
    """ms per segment of the prefill's dense GEMMs alone (projections, SwiGLU MLP, LM head at their exact shapes,
    torch.mm) and of its local attention alone (torch's SDPA, causal, the (segments, H, N, d) blocks with GQA, as
    PyTorch eager runs it; ORT's Attention op on the same blocks, in query groups as the exported graph runs it, and
    on the full square), this process, median CPU time of the process (all its threads)."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    from infini_attention.torch_impl.export_forms import PARTS

    torch.set_num_threads(threads)
    a, S, N = config.attn, segments, config.attn.segment_len
    T, D = S * N, a.d_model
    shapes = [(D, a.n_heads * a.d_key), (D, a.n_kv_heads * a.d_key), (D, a.n_kv_heads * a.d_value),
              (a.n_heads * a.d_value, D), (D, config.d_ff), (D, config.d_ff), (config.d_ff, D)] * config.n_layers
    shapes.append((D, config.vocab_size))
    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(T, k, generator=g), torch.randn(k, n, generator=g)) for k, n in shapes]
    q = torch.randn(S, a.n_heads, N, a.d_key, generator=g)
    k = torch.randn(S, a.n_kv_heads, N, a.d_key, generator=g)
    v = torch.randn(S, a.n_kv_heads, N, a.d_value, generator=g)
    gqa = a.n_heads != a.n_kv_heads

    def gemms():
        for x, w in mats:
            torch.mm(x, w)

    def sdpa():
        for _ in range(config.n_layers):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    V = helper.make_tensor_value_info
    F = TensorProto.FLOAT
    size = N // PARTS  # as export_forms.by_parts cuts a chunk's blocks: group j sees keys [0, (j + 1) * size)
    nodes = []
    for j in range(PARTS):
        sl = [helper.make_tensor(f"s{j}{w}", TensorProto.INT64, [1], [x]) for w, x in (("a", j * size),
                                                                                    ("b", (j + 1) * size), ("z", 0))]
        nodes += [helper.make_node("Constant", [], [f"{t.name}"], value=t) for t in sl]
        axis = helper.make_tensor(f"ax{j}", TensorProto.INT64, [1], [2])
        nodes.append(helper.make_node("Constant", [], [f"ax{j}"], value=axis))
        for src, lo, hi, dst in (("q", "a", "b", "q"), ("k", "a", "b", "k"), ("v", "a", "b", "v"),
                                 ("k", "z", "a", "kp"), ("v", "z", "a", "vp")):
            nodes.append(helper.make_node("Slice", [src, f"s{j}{lo}", f"s{j}{hi}", f"ax{j}"], [f"{dst}{j}"]))
        nodes.append(helper.make_node("Attention", [f"q{j}", f"k{j}", f"v{j}", "", f"kp{j}", f"vp{j}"],
                                      [f"y{j}", f"pk{j}", f"pv{j}"], is_causal=1))
    ins = [V("q", F, list(q.shape)), V("k", F, list(k.shape)), V("v", F, list(v.shape))]
    graphs = {"full": helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)],
                                        "attention", ins, [V("y", F, None)]),
              "parts": helper.make_graph(nodes, "by_parts", ins, [V(f"y{j}", F, None) for j in range(PARTS)])}
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    for name, graph in graphs.items():
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        model.ir_version = 10
        sessions[name] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    # ORT's MatMul on the same GEMMs, weights as initializers (prepacked, as in the exported graph)
    from onnx import numpy_helper

    mm_nodes = [helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"o{i}"]) for i in range(len(mats))]
    mm_graph = helper.make_graph(mm_nodes, "gemms", [V(f"x{i}", F, list(x.shape)) for i, (x, _) in enumerate(mats)],
                                 [V(f"o{i}", F, None) for i in range(len(mats))],
                                 [numpy_helper.from_array(w.numpy(), f"w{i}") for i, (_, w) in enumerate(mats)])
    mm_model = helper.make_model(mm_graph, opset_imports=[helper.make_opsetid("", 23)])
    mm_model.ir_version = 10
    mm_sess = ort.InferenceSession(mm_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    mm_feeds = {f"x{i}": x.numpy() for i, (x, _) in enumerate(mats)}

    def ort_gemms():
        mm_sess.run(None, mm_feeds)

    def ort_attention(name):
        def run():
            for _ in range(config.n_layers):
                sessions[name].run(None, feeds)
        return run

    out = {}
    for name, fn in (("gemm", gemms), ("ort_gemm", ort_gemms), ("sdpa", sdpa),
                     ("ort_attention_full_square", ort_attention("full")),
                     ("ort_attention_by_parts", ort_attention("parts"))):
        fn()
        times = []
        for _ in range(repeats):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        out[name + "_ms_per_segment"] = 1e3 * float(np.median(times)) / S
    flops = sum(2 * T * kk * n for kk, n in shapes)
    out["gemm_gflops"] = flops / (out["gemm_ms_per_segment"] * S / 1e3) / 1e9
    out["ort_gemm_gflops"] = flops / (out["ort_gemm_ms_per_segment"] * S / 1e3) / 1e9
    print(f"   kernels alone, {threads} thread(s), ms per segment (CPU time, median of {repeats}): dense GEMMs "
          f"{out['gemm_ms_per_segment']:.2f} in PyTorch ({out['gemm_gflops']:.0f} GFLOP/s), "
          f"{out['ort_gemm_ms_per_segment']:.2f} in ORT ({out['ort_gemm_gflops']:.0f} GFLOP/s); local attention: "
          f"PyTorch SDPA {out['sdpa_ms_per_segment']:.2f}, ORT's Attention op {out['ort_attention_by_parts_ms_per_segment']:.2f} "
          f"in {PARTS} query groups as exported ({out['ort_attention_full_square_ms_per_segment']:.2f} on the full "
          "causal square)")
    return out

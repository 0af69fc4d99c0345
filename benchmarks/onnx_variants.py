"""Alternatives to what the exported prefill graph does, timed side by side (the figures behind the README's
"tried and measured slower or no faster"): `small` preset, one thread, CPU time, median of interleaved runs.

    python benchmarks/onnx_variants.py            # both parts
    python benchmarks/onnx_variants.py --skip prefill

1. prefill  the chunk form (a prefill of 8 segments after one) traced with variants of its equations, each as
            its own ONNX graph in ORT, against PyTorch eager: the export's form (the Attention op in 4 query
            groups), 1 or 8 groups, MatMul/Softmax attention, Elu as Where/Exp.
2. kernels  local attention alone on the (8 blocks, 4 heads, 256, 32) causal blocks of one layer: the standard
            Attention op, com.microsoft GroupQueryAttention and MultiHeadAttention (keys/values expanded to the
            query heads), PyTorch SDPA.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def prefill_variants(repeats: int = 5) -> dict:
    import onnxruntime as ort
    import torch

    from infini_attention.export import exporter as ex
    from infini_attention.export import graph as gr
    from infini_attention.export import preset_config, preset_params
    from infini_attention.torch_impl import InfiniTransformerLM, naive
    from infini_attention.torch_impl import export_forms as ef

    torch.set_num_threads(1)
    config, N = preset_config("small"), preset_config("small").attn.segment_len
    params = preset_params(config, 0)
    exported = ef.equations

    def variant(parts=ef.PARTS, attention=None, sigma=None):
        def equations(form, kind="matmul", wide_state=False):
            kind = attention or kind
            eq = exported(form, kind, wide_state)
            if form == "chunk":
                local = ef.attention_op if kind == "op" else naive.local_attention
                eq = eq.replace(local_attention=ef.by_parts(local, parts) if parts > 1 else local)
                eq = eq.replace(expand_kv=naive.expand_kv) if kind == "matmul" else eq
                eq = eq.replace(sigma=sigma) if sigma else eq
            return eq
        return equations

    variants = {"exported (Attention op, 4 groups)": variant(), "1 group": variant(1), "8 groups": variant(8),
                "MatMul/Softmax, 4 groups": variant(attention="matmul"), "Elu as Where/Exp": variant(
                    sigma=ef.sigma_by_where)}
    module = ex.traced_module(config, params, "float32")
    example = ex._example_inputs(config, "float32", "float32", "chunk")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    try:
        for name, eqs in variants.items():
            gr.equations = eqs
            model = gr.trace(module, config, "float32", "float32", "chunk", "dynamo", 23, example)
            sessions[name] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    finally:
        gr.equations = exported
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32, check_values=False).eval()
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, 9 * N))
    with torch.inference_mode():
        _, states = model(torch.as_tensor(ids[:, :N]))
        want = model(torch.as_tensor(ids[:, N:]), states)[0].numpy()
    feeds = {"input_ids": ids[:, N:], "past_segments": np.array(1, np.int64)}
    for i, s in enumerate(states):  # one segment done: nothing pending
        feeds[f"past_key_values.{i}.key"] = s.k.numpy()[:, :, :0].copy()
        feeds[f"past_key_values.{i}.value"] = s.v.numpy()[:, :, :0].copy()
        feeds[f"past_memory.{i}.M"], feeds[f"past_memory.{i}.z"] = s.M.numpy().copy(), s.z.numpy().copy()
    times = {name: [] for name in ["PyTorch eager", *sessions]}
    for r in range(repeats):
        for name, sess in sessions.items():
            t = time.process_time()
            out = sess.run(["logits"], feeds)[0]
            times[name].append(time.process_time() - t)
            assert np.abs(out - want).max() < 1e-4, (name, np.abs(out - want).max())  # the same results
        with torch.inference_mode():
            t = time.process_time()
            model(torch.as_tensor(ids[:, N:]), states)
            times["PyTorch eager"].append(time.process_time() - t)
    out = {name: 1e3 * float(np.median(v)) / 8 for name, v in times.items()}
    print("1. prefill of 8 segments, ms per segment (CPU, median of %d):" % repeats)
    for name, ms in out.items():
        print(f"   {name}: {ms:.2f}")
    return out


def attention_kernels(repeats: int = 7) -> dict:
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    torch.set_num_threads(1)
    B, S, H, Hkv, d = 8, 256, 4, 2, 32
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    V, F = helper.make_tensor_value_info, TensorProto.FLOAT

    def session(node, inputs, n_out):
        graph = helper.make_graph([node], "g", inputs, [V(f"o{i}", F, None) for i in range(n_out)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(
            "com.microsoft", 1)])
        model.ir_version = 10
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    q4 = rng.standard_normal((B, H, S, d), np.float32)
    k4, v4 = (rng.standard_normal((B, Hkv, S, d), np.float32) for _ in range(2))
    flat = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(B, S, -1))  # (B, S, heads*d)
    q3, k3, v3 = flat(q4), flat(k4), flat(v4)
    k3e, v3e = flat(np.repeat(k4, H // Hkv, 1)), flat(np.repeat(v4, H // Hkv, 1))
    std = session(helper.make_node("Attention", ["q", "k", "v"], ["o0"], is_causal=1),
                  [V("q", F, list(q4.shape)), V("k", F, list(k4.shape)), V("v", F, list(v4.shape))], 1)
    gqa = session(helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total"],
                                   ["o0", "o1", "o2"], domain="com.microsoft", num_heads=H, kv_num_heads=Hkv),
                  [V("q", F, list(q3.shape)), V("k", F, list(k3.shape)), V("v", F, list(v3.shape)),
                   V("seqlens_k", TensorProto.INT32, [B]), V("total", TensorProto.INT32, [])], 3)
    mha = session(helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o0"], domain="com.microsoft",
                                   num_heads=H, unidirectional=1),
                  [V("q", F, list(q3.shape)), V("k", F, list(k3e.shape)), V("v", F, list(v3e.shape))], 1)
    tq, tk, tv = (torch.from_numpy(a) for a in (q4, k4, v4))
    runs = {"Attention (opset 23)": lambda: std.run(None, {"q": q4, "k": k4, "v": v4})[0],
            "com.microsoft GroupQueryAttention": lambda: gqa.run(["o0"], {
                "q": q3, "k": k3, "v": v3, "seqlens_k": np.full(B, S - 1, np.int32),
                "total": np.array(S, np.int32)})[0],
            "com.microsoft MultiHeadAttention": lambda: mha.run(None, {"q": q3, "k": k3e, "v": v3e})[0],
            "PyTorch SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True,
                                                                                     enable_gqa=True).numpy()}
    want = runs["PyTorch SDPA"]()
    for name, fn in runs.items():  # the same results (3-D outputs back to (B, H, S, d))
        got = fn()
        got = got if got.ndim == 4 else got.reshape(B, S, H, d).transpose(0, 2, 1, 3)
        assert np.abs(got - want).max() < 1e-4, name
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.process_time()
            for _ in range(5):
                fn()
            times[name].append((time.process_time() - t) / 5)
    out = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
    print(f"2. causal attention of one layer's {B} blocks (H={H}, Hkv={Hkv}, N={S}, d={d}), ms (CPU, median):")
    for name, ms in out.items():
        print(f"   {name}: {ms:.2f}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip", nargs="*", default=[], choices=["prefill", "kernels"])
    args = p.parse_args()
    if "prefill" not in args.skip:
        prefill_variants()
    if "kernels" not in args.skip:
        attention_kernels()


if __name__ == "__main__":
    main()

"""Bring your model: convert a Hugging Face Llama, fine-tune it with BPTT through the memory, export, stream.

    python -m examples.continual.finetune                      # a tiny random Llama, ~2 min on 2 CPU cores
    python -m examples.continual.finetune --hf path/to/llama   # a local LlamaForCausalLM / Mistral directory

1. convert   the HF model (``save_pretrained`` directory) -> InfiniTransformerLM (torch_impl.hf.lm_from_hf);
             checked: on the first segment, with the gates on the local branch, logits equal HF's
2. finetune  passkey documents of several segments, each forwarded in one call with BPTT through the
             memory (torch_impl.finetune); the documents come from infini_attention.export.passkey.data
3. save      save_pretrained (config.json + model.safetensors), reloaded bit-identically
4. export    infini_attention.export.export -> ONNX (self-checked against the reference)
5. stream    a long passkey document through ONNX Runtime (InfiniSession) and PyTorch side by side,
             logits compared at checkpoints; then generate the answer in both
Everything lands in ``--out`` (report.json has every figure printed).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from infini_attention.export.passkey import data
from infini_attention.torch_impl import InfiniTransformerLM
from infini_attention.torch_impl.finetune import finetune
from infini_attention.torch_impl.hf import lm_from_hf


def tiny_llama(directory: Path, seed: int) -> Path:
    """A small random LlamaForCausalLM over the passkey vocabulary, saved as a Hugging Face directory."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                                   intermediate_size=128, num_hidden_layers=2, vocab_size=data.VOCAB_SIZE,
                                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


def conversion_check(hf_dir: Path, model: InfiniTransformerLM) -> float | None:
    """max |logits - HF logits| on one segment with the gates forced local (None without transformers)."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    N, V = model.config.attn.segment_len, min(model.config.vocab_size, hf.config.vocab_size)
    tokens = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(0))
    local = InfiniTransformerLM.from_numpy(model.config, {k: np.full_like(v, -40.0) if k.endswith(".beta") else v
                                                          for k, v in model.numpy_params().items()},
                                           dtype=torch.float32)
    with torch.no_grad():
        return (local(tokens)[0] - hf(tokens).logits).abs().max().item()


def passkey_batch(args):
    """Passkey documents of min_len..max_len tokens: loss on the 5 answer digits plus ``lm_weight`` times the
    next-token loss of the predictable positions (as examples/passkey/train.py)."""
    N = args.segment_len

    def batch(step, rng):
        L = int(rng.integers(args.min_len, args.max_len + 1)) // N * N + 1  # the question opens a segment
        tok, tgt, ans, docs = data.training_batch(rng, args.batch, L, rng.random(args.batch))
        lm = data.lm_mask(docs, ans)
        w = ans + args.lm_weight * lm * (ans.sum() / max(1, lm.sum()))
        return tok, tgt, w.astype(np.float32)
    return batch


@torch.no_grad()
def accuracy(model, length: int, n: int = 64, seed: int = 1000) -> float:
    """Teacher-forced exact match of the 5 digits, question opening a segment."""
    rng = np.random.default_rng(seed)
    tok, tgt, mask, _ = data.training_batch(rng, n, length, rng.random(n))
    logits, _ = model(torch.from_numpy(tok))
    ok = (logits.argmax(-1) == torch.from_numpy(tgt))[torch.from_numpy(mask)].view(n, -1).all(1)
    return round(ok.float().mean().item(), 3)


def stream_compare(onnx_path: Path, model: InfiniTransformerLM, length: int, verify_every: int, seed: int,
                   threads: int, decode: int = 64) -> dict:
    """One passkey document of ``length`` prompt tokens through ORT and PyTorch in segment-sized calls, logits
    compared at every checkpoint; then 5 + ``decode`` greedy tokens from each, one call per token (the first 5
    are the answer; all must be the same in both)."""
    from infini_attention.export import InfiniSession

    N = model.config.attn.segment_len
    rng = np.random.default_rng(seed)
    doc = data.PasskeyDoc(data.prompt_length(length, N), 0.25, data.random_passkey(rng), int(rng.integers(2**31)))
    sess = InfiniSession(onnx_path, provider="cpu", intra_op_threads=threads)
    states, t_ort, t_pt, worst, scale, checked = None, 0.0, 0.0, 0.0, 0.0, []
    for start in range(0, doc.length, N):
        ids = doc.chunk(start, start + N)[None]
        t = time.perf_counter()
        ort_logits = sess.feed(ids)
        t_ort += time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            pt, states = model(torch.from_numpy(ids), states)
        t_pt += time.perf_counter() - t
        if (start + N) % verify_every < N or start + N >= doc.length:
            diff = float(np.abs(ort_logits - pt.numpy()).max())
            worst, scale = max(worst, diff), max(scale, float(np.abs(pt.numpy()).max()))
            checked.append({"position": start + ids.shape[1], "max_abs_diff": diff})
    last = pt[:, -1]
    t = time.perf_counter()
    ort_tokens = sess.generate(5 + decode)[0].tolist()
    t_ort_gen = time.perf_counter() - t
    t = time.perf_counter()
    pt_tokens = []
    with torch.no_grad():
        for _ in range(5 + decode):
            nxt = last.argmax(-1, keepdim=True)
            pt_tokens.append(int(nxt))
            out, states = model(nxt, states)
            last = out[:, -1]
    t_pt_gen = time.perf_counter() - t
    return {"length": doc.length, "checkpoints": len(checked), "max_abs_diff": worst, "max_abs_logit": scale,
            "ort_tokens_per_s": round(doc.length / t_ort), "torch_tokens_per_s": round(doc.length / t_pt),
            "decoded": 5 + decode, "ort_ms_per_decoded_token": round(1e3 * t_ort_gen / (5 + decode), 2),
            "torch_ms_per_decoded_token": round(1e3 * t_pt_gen / (5 + decode), 2),
            "passkey": list(doc.passkey), "ort_answer": ort_tokens[:5], "torch_answer": pt_tokens[:5],
            "same_tokens": ort_tokens == pt_tokens, "correct": ort_tokens[:5] == list(doc.passkey)}


def run(args) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}}

    print("[1/5] convert")
    hf_dir = Path(args.hf) if args.hf else tiny_llama(out / "hf-tiny-llama", args.seed)
    model = lm_from_hf(hf_dir, segment_len=args.segment_len, update=args.update, beta_init=args.beta_init)
    report["config"] = model.config.to_dict()
    report["conversion_max_abs_diff"] = conversion_check(hf_dir, model)
    print(f"      {hf_dir} -> {sum(p.numel() for p in model.parameters()):,} parameters; first segment, gates "
          f"local: max |logits - HF| = {report['conversion_max_abs_diff']}")

    print(f"[2/5] finetune {args.steps} steps, documents of {args.min_len}-{args.max_len} tokens "
          f"(BPTT through the memory)")
    L = args.max_len // args.segment_len * args.segment_len + 1
    lengths = [m * (L - 1) + 1 for m in (1, 4, 8, 16)]  # the question opens a segment
    report["before"] = {f"acc@{n}": accuracy(model, n) for n in lengths[:2]}
    log = finetune(model, passkey_batch(args), steps=args.steps, lr=args.lr, seed=args.seed,
                   log_every=max(1, args.steps // 4), progress=not args.no_progress, time_budget=args.time_budget,
                   evaluate=lambda m: {f"acc@{L}": accuracy(m, L, n=32)})
    report["after"] = {f"acc@{n}": accuracy(model, n) for n in lengths}
    report["train"] = {"steps": log["steps"], "train_time_s": log["train_time_s"], "tokens": log["tokens"],
                       "history": log["history"]}
    print(f"      {log['steps']} steps in {log['train_time_s']} s; passkey accuracy before {report['before']}, "
          f"after {report['after']}")

    print("[3/5] save_pretrained")
    model.save_pretrained(out / "infini-llama")
    back = InfiniTransformerLM.from_pretrained(out / "infini-llama")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), back.parameters()))
    print(f"      {out / 'infini-llama'} (config.json + model.safetensors), reloaded bit-identically")

    print("[4/5] export")
    from infini_attention.export import export

    r = export(model.config, model.numpy_params(), out / "infini-llama.onnx", seed=args.seed)
    report["export"] = {"path": str(r.path), "seconds": round(r.seconds, 1), "checks": len(r.checks)}
    print(f"      {r.path} ({r.path.stat().st_size / 2**20:.2f} MiB), {len(r.checks)} self-check comparisons passed")

    print(f"[5/5] stream a {args.stream_len:,}-token passkey document through ONNX Runtime and PyTorch")
    s = stream_compare(r.path, model, args.stream_len, args.verify_every, args.seed, args.threads)
    report["stream"] = s
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]  # timings are pessimistic on a busy machine
    print(f"      ORT vs PyTorch at {s['checkpoints']} checkpoints: max |diff| {s['max_abs_diff']:.2e} "
          f"(logits up to {s['max_abs_logit']:.1f}); prefill {s['ort_tokens_per_s']:,} tokens/s ORT, "
          f"{s['torch_tokens_per_s']:,} PyTorch (segment-sized calls); decode "
          f"{s['ort_ms_per_decoded_token']} ms/token ORT, "
          f"{s['torch_ms_per_decoded_token']} PyTorch")
    print(f"      generate: ORT {s['ort_answer']}, PyTorch {s['torch_answer']} (all {s['decoded']} generated tokens "
          f"the same: {s['same_tokens']}); "
          f"passkey {s['passkey']}: {'retrieved' if s['correct'] else 'not retrieved'}")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", help="a local Hugging Face LlamaForCausalLM / MistralForCausalLM directory "
                                "(default: a tiny random Llama over the passkey vocabulary)")
    p.add_argument("--out", default="artifacts/continual")
    p.add_argument("--segment-len", type=int, default=32)
    p.add_argument("--update", choices=["linear", "delta"], default="linear")
    p.add_argument("--beta-init", type=float, default=0.0, help="every gate's start (0: an even mix)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lm-weight", type=float, default=0.1)
    p.add_argument("--min-len", type=int, default=40, help="shortest training document (tokens)")
    p.add_argument("--max-len", type=int, default=256, help="longest training document (tokens)")
    p.add_argument("--stream-len", type=int, default=2048, help="tokens of the streamed document")
    p.add_argument("--verify-every", type=int, default=256, help="compare ORT with PyTorch every T tokens")
    p.add_argument("--time-budget", type=float, default=None, help="stop fine-tuning after this many seconds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    report = run(parse_args(argv))
    return 0 if report["stream"]["same_tokens"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

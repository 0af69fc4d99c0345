"""Why recall fades with length: how much of each memory read the passkey gets.

    python -m examples.passkey.diagnose --update linear --lengths 8K,128K,1M

A memory read is a weighted average of the values of every token written so far, the weight of
token t being sigma(q) . sigma(k_t) (SPEC.md §6). For the query that produces each answer digit
this prints, per head of the last layer, the passkey's *share* of the read (the weight of the 14
needle tokens over all weights) and the *ratio* of a needle token's weight to a filler token's.
With ratio r and n filler tokens the share is about 14 r / (14 r + n): it falls as 1/n once
n >> 14 r, and the answer goes when the passkey's share no longer outweighs what the
rest of the network adds. The stream is run in PyTorch (fast) in pieces of 8K tokens at
constant memory (the weights are linear in sigma(k), so two running sums per layer suffice).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from infini_attention.export.passkey import data
from infini_attention.export.passkey.model import checkpoint_path, load_checkpoint

from .evaluate import fmt_len, parse_lengths


def sigma(x):
    return torch.nn.functional.elu(x) + 1.0


@torch.no_grad()
def needle_shares(model, docs, piece: int = 8192):
    """-> (share, ratio), each (5 answer positions, n_layers, H), averaged over the docs.

    The weights are linear in sigma(k), so only two sums of sigma(k) per layer are kept while
    streaming: over the needle's tokens and over all tokens written to memory before the
    question's segment (the latter is the memory's z)."""
    c = model.config
    N, H, Hkv, dk = c.attn.segment_len, c.attn.n_heads, c.attn.n_kv_heads, c.attn.d_key
    L, B = docs[0].length, len(docs)
    kp, qpos = docs[0].key_pos, docs[0].question_pos
    written = qpos // N * N  # tokens in memory when the question is read
    inputs = {}
    hooks = [blk.attn.register_forward_hook(lambda m, a, o, i=i: inputs.__setitem__(i, a[0]))
             for i, blk in enumerate(model.layers)]
    n_layers = len(model.layers)
    k_all = torch.zeros(n_layers, B, Hkv, dk, dtype=torch.float64)
    k_needle = torch.zeros_like(k_all)
    try:
        states, pos = None, 0
        while pos < qpos:
            stop = min(qpos, pos + piece)
            _, states = model(torch.from_numpy(np.stack([d.chunk(pos, stop) for d in docs])), states)
            hi = min(stop, written)
            for i, blk in enumerate(model.layers):
                if hi <= pos:
                    continue
                k = sigma((inputs[i] @ blk.attn.wk).view(B, -1, Hkv, dk)[:, :hi - pos]).double()
                k_all[i] += k.sum(1)
                a, b = max(kp, pos), min(kp + data.NEEDLE_LEN, hi)
                if a < b:
                    k_needle[i] += k[:, a - pos:b - pos].sum(1)
            pos = stop
        tail = np.stack([np.concatenate([d.chunk(qpos, L), d.answer[:4]]) for d in docs])  # question + 4 digits
        model(torch.from_numpy(tail), states)
        share = torch.zeros(n_layers, B, 5, H, dtype=torch.float64)
        ratio = torch.zeros_like(share)
        n_filler = written - data.NEEDLE_LEN
        for i, blk in enumerate(model.layers):
            sq = sigma((inputs[i] @ blk.attn.wq).view(B, -1, H, dk)).double()  # (B, 5, H, dk)
            g = H // Hkv
            w_all = torch.einsum("bqhd,bhd->bqh", sq, k_all[i].repeat_interleave(g, dim=1))
            w_needle = torch.einsum("bqhd,bhd->bqh", sq, k_needle[i].repeat_interleave(g, dim=1))
            share[i] = w_needle / w_all
            ratio[i] = (w_needle / data.NEEDLE_LEN) / ((w_all - w_needle) / n_filler)
    finally:
        for h in hooks:
            h.remove()
    return share.mean(1).permute(1, 0, 2).numpy(), ratio.mean(1).permute(1, 0, 2).numpy()


@torch.no_grad()
def boundary_breakdown(model, offset: int, length: int = 2048, samples: int = 256, seed: int = 5) -> dict:
    """Answers that cross a segment boundary (question at ``offset`` >= N - 4 of its segment): the digit
    predicted at the first position of the new segment, whose local attention sees only the digit just
    written, split by whether that digit occurs again in the passkey (then "the digit after it in the
    needle" is ambiguous for a read without recency). Teacher-forced in PyTorch (equal to greedy
    decoding up to the first error), middle depth."""
    N = model.config.attn.segment_len
    rng = np.random.default_rng([seed, offset])
    tok, tgt, mask, docs = data.training_batch(rng, samples, data.prompt_length(length, N, offset),
                                               np.full(samples, 0.5))
    logits, _ = model(torch.from_numpy(tok))
    pred = logits.argmax(-1).numpy()[mask].reshape(samples, data.N_DIGITS)
    ok = pred == tgt[mask].reshape(samples, data.N_DIGITS)
    j = N - offset  # 0-based index of the digit predicted at the new segment's first position
    keys = np.stack([d.answer for d in docs])
    repeated = np.array([keys[b, j - 1] in np.delete(keys[b], j - 1) for b in range(samples)])
    # a wrong answer there that is the digit after ANOTHER occurrence of the input digit: the read found
    # the right digit in the needle, but the wrong occurrence of it
    others = [{int(keys[b, m + 1]) for m in range(data.N_DIGITS - 1) if m != j - 1 and keys[b, m] == keys[b, j - 1]}
              for b in range(samples)]
    wrong = repeated & ~ok[:, j]
    return {"offset": offset, "digit": j + 1, "all_digits": float(ok.all(1).mean()), "digit_acc": float(ok[:, j].mean()),
            "repeated": (int(ok[repeated, j].sum()), int(repeated.sum())),
            "unique": (int(ok[~repeated, j].sum()), int((~repeated).sum())),
            "other_occurrence": (sum(int(pred[b, j]) in others[b] for b in np.flatnonzero(wrong)), int(wrong.sum()))}


def main(argv=None) -> int:
    from infini_attention.torch_impl import InfiniTransformerLM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update", choices=["linear", "delta"], default="linear")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--lengths", default="2K,32K,1M")
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--boundary", action="store_true",
                   help="also break down answers that cross a segment boundary (offsets N-4 .. N-1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config, params, _ = load_checkpoint(args.checkpoint or checkpoint_path(args.update))
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval()
    last = config.n_layers - 1
    print(f"{config.attn.update}: last layer (layer {last}); per answer digit, the head that gives the passkey the "
          f"largest share of its memory read")
    for X in parse_lengths(args.lengths):
        docs = data.make_docs(np.random.default_rng([args.seed, X]), args.samples, X + 1, args.depth)
        share, ratio = needle_shares(model, docs)
        best = share[:, last].argmax(-1)  # (5,)
        cells = [f"d{j + 1}: h{h} share {share[j, last, h]:.3f} ratio {ratio[j, last, h]:.1e}"
                 for j, h in enumerate(best)]
        print(f"{fmt_len(X):>5s}  " + " | ".join(cells))
    if args.boundary:
        N = config.attn.segment_len
        print("answers crossing a segment boundary (2K, middle depth, teacher-forced): the digit predicted at the new "
              "segment's first position, by whether the digit before it occurs twice in the passkey")
        for off in range(N - 4, N):
            r = boundary_breakdown(model, off)
            (rc, rn), (uc, un) = r["repeated"], r["unique"]
            print(f"  question at offset {off}: all 5 digits {r['all_digits']:.2f}; digit {r['digit']} {r['digit_acc']:.2f}"
                  f" = {rc}/{rn} ({rc / max(rn, 1):.2f}) when its input digit repeats, {uc}/{un} "
                  f"({uc / max(un, 1):.2f}) when unique; {r['other_occurrence'][0]}/{r['other_occurrence'][1]} of the "
                  "repeated-digit errors answer the digit after its other occurrence")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

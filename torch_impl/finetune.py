"""Continual pre-training of an InfiniTransformerLM (a converted Hugging Face model, or any other) on long sequences.

Each step forwards one batch of long sequences in ONE call: the segments are processed in order and the
loss back-propagates through the compressive memory across all of them (full BPTT, the paper's setting;
``detach_every=k`` truncates it every k segments). AdamW, linear warmup then cosine decay to 10%,
gradient clipping, a tqdm progress bar.

    def batch(step, rng):            # -> tokens (B, T), targets (B, T), mask (B, T): bool, weights or None
        ...
    log = finetune(model, batch, steps=300, lr=1e-3)
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged over the positions of a bool ``mask``, weighted by a float one (sum(w ce) / sum(w)),
    or over every position (None)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
    if mask is None:
        return ce.mean()
    if mask.dtype == torch.bool:
        return ce[mask].mean()
    return (ce * mask).sum() / mask.sum()


def next_token_batch(tokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, next-token targets, mask of every position but the last) from token ids (B, T)."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    targets = torch.cat((tokens[:, 1:], torch.zeros_like(tokens[:, :1])), dim=1)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, -1] = False
    return tokens, targets, mask


def _schedule(lr: float, steps: int, warmup: int) -> Callable[[int], float]:
    def at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    return at


def finetune(model, batch: Callable, *, steps: int, lr: float = 1e-3, warmup: float = 0.05,
             weight_decay: float = 0.0, clip: float = 1.0, detach_every: int | None = None, seed: int = 0,
             log_every: int = 50, evaluate: Callable | None = None, time_budget: float | None = None,
             progress: bool = True, desc: str = "finetune") -> dict:
    """Train ``model`` in place for ``steps`` steps; returns the log (losses, history, train_time_s).

    batch(step, rng) -> (tokens, targets, mask): integer (B, T) arrays or tensors; mask bool (positions in the
    loss), float (per-position weights) or None (every position). evaluate(model) -> dict, run without grad
    every ``log_every`` steps and at the end.
    detach_every: None (full BPTT through every segment's memory) or k (truncated every k segments).
    time_budget: stop after this many seconds (the log says where)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    lr_at = _schedule(lr, steps, max(1, int(warmup * steps)))
    log = {"steps": 0, "losses": [], "history": [], "tokens": 0}
    try:
        from tqdm import tqdm
        bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        bar = range(steps)
    t0, ema = time.perf_counter(), None
    model.train()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        tokens, targets, mask = batch(step, rng)
        tokens, targets = torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long)
        mask = None if mask is None else torch.as_tensor(mask)
        mask = mask if mask is None or mask.dtype == torch.bool else mask.float()
        logits, _ = model(tokens, detach_every=detach_every) if detach_every else model(tokens)
        loss = lm_loss(logits, targets, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        value = loss.item()
        log["losses"].append(round(value, 4))
        log["steps"], log["tokens"] = step + 1, log["tokens"] + tokens.numel()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{ema:.3f}", T=tokens.shape[1], refresh=False)
        last = step == steps - 1 or (time_budget and time.perf_counter() - t0 > time_budget)
        if (step + 1) % log_every == 0 or last:
            rec = {"step": step + 1, "time_s": round(time.perf_counter() - t0, 1), "loss": round(ema, 4)}
            if evaluate is not None:
                model.eval()
                with torch.no_grad():
                    rec.update(evaluate(model))
                model.train()
            log["history"].append(rec)
            if progress and hasattr(bar, "write"):
                bar.write(" ".join(f"{k}={v}" for k, v in rec.items()))
        if last:
            if step < steps - 1:
                log["stopped_early_at"] = step + 1
            break
    model.eval()
    log["train_time_s"] = round(time.perf_counter() - t0, 1)
    return log

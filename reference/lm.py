"""The minimal Infini-Transformer language model (SPEC.md §9)."""
from __future__ import annotations

import numpy as np

from . import equations as eq
from .config import LMConfig
from .layer import forward, init_params
from .state import InfiniState
from .validate import as_float64


def lm_param_shapes(config: LMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes of every LM parameter; attention ones are SPEC.md §3's under ``layers.{i}.attn.``."""
    from .validate import param_shapes

    D, F, V = config.d_model, config.d_ff, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embed": (V, D)}
    for i in range(config.n_layers):
        shapes[f"layers.{i}.attn_norm"] = (D,)
        shapes.update({f"layers.{i}.attn.{n}": s for n, s in param_shapes(config.attn).items()})
        shapes[f"layers.{i}.mlp_norm"] = (D,)
        shapes[f"layers.{i}.mlp.w_gate"] = (D, F)
        shapes[f"layers.{i}.mlp.w_up"] = (D, F)
        shapes[f"layers.{i}.mlp.w_down"] = (F, D)
    shapes["final_norm"] = (D,)
    shapes["lm_head"] = (D, V)
    return shapes


def lm_init_params(config: LMConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random LM parameters: norms at 1, weights ``N(0, 1/fan_in)``, embeddings ``N(0, 1)``."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in lm_param_shapes(config).items():
        if name.endswith("norm"):
            params[name] = np.ones(shape)
        elif name == "embed":
            params[name] = rng.standard_normal(shape)
        elif ".attn." not in name:
            params[name] = rng.standard_normal(shape) / np.sqrt(shape[0])
    for i in range(config.n_layers):
        layer_seed = int(rng.integers(2**31))
        params.update({f"layers.{i}.attn.{n}": a for n, a in init_params(config.attn, layer_seed).items()})
    return params


def lm_forward(config: LMConfig, params: dict, tokens, states: list[InfiniState] | None = None):
    """tokens (B, T) int -> (logits (B, T, vocab), one new InfiniState per layer) (SPEC.md §9).

    Each block: ``h = x + attn(rms_norm(x))``; ``out = h + swiglu(rms_norm(h))``.
    """
    tokens = _check_tokens(config, tokens)
    p = _check_lm_params(config, params)
    if states is not None and (not isinstance(states, (list, tuple)) or len(states) != config.n_layers):
        got = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
        raise ValueError(f"states: expected None or a list of {config.n_layers} InfiniState, got {got}")
    x = p["embed"][tokens]  # (B, T, D)
    new_states = []
    for i in range(config.n_layers):
        attn = {n: p[f"layers.{i}.attn.{n}"] for n in ("wq", "wk", "wv", "wo", "beta")}
        a, st = forward(config.attn, attn, eq.rms_norm(x, p[f"layers.{i}.attn_norm"], config.norm_eps),
                        None if states is None else states[i])
        h = x + a
        x = h + eq.swiglu(eq.rms_norm(h, p[f"layers.{i}.mlp_norm"], config.norm_eps),
                          p[f"layers.{i}.mlp.w_gate"], p[f"layers.{i}.mlp.w_up"], p[f"layers.{i}.mlp.w_down"])
        new_states.append(st)
    return eq.rms_norm(x, p["final_norm"], config.norm_eps) @ p["lm_head"], new_states


def _check_tokens(config: LMConfig, tokens) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens: expected an integer array of shape (B, T), got {arr.dtype} {tuple(arr.shape)}")
    if arr.size and (arr.min() < 0 or arr.max() >= config.vocab_size):
        raise ValueError(f"tokens: expected ids in [0, {config.vocab_size}), got range "
                         f"[{int(arr.min())}, {int(arr.max())}]")
    return arr


def _check_lm_params(config: LMConfig, params: dict) -> dict[str, np.ndarray]:
    shapes = lm_param_shapes(config)
    missing = sorted(set(shapes) - set(params))
    if missing:
        raise ValueError(f"params: expected LM keys {len(shapes)} keys, missing {missing[:5]}")
    return {n: as_float64(f"params['{n}']", params[n], s) for n, s in shapes.items()}

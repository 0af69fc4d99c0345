"""The minimal Infini-Transformer language model (SPEC.md §9)."""
from __future__ import annotations

import numpy as np

from . import equations as eq
from .config import LMConfig
from .layer import forward, init_params
from .shapes import ATTN_PARAMS, lm_param_shapes
from .state import InfiniState
from .validate import check_params, check_token_ids


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
    tokens = np.asarray(check_token_ids(config.vocab_size, np.asarray(tokens)))
    p = check_params(config, params)
    if states is not None and (not isinstance(states, (list, tuple)) or len(states) != config.n_layers):
        got = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
        raise ValueError(f"states: expected None or a list of {config.n_layers} InfiniState, got {got}")
    x = p["embed"][tokens]  # (B, T, D)
    new_states = []
    for i in range(config.n_layers):
        attn = {n: p[f"layers.{i}.attn.{n}"] for n in ATTN_PARAMS}
        a, st = forward(config.attn, attn, eq.rms_norm(x, p[f"layers.{i}.attn_norm"], config.norm_eps),
                        None if states is None else states[i])
        h = x + a
        x = h + eq.swiglu(eq.rms_norm(h, p[f"layers.{i}.mlp_norm"], config.norm_eps),
                          p[f"layers.{i}.mlp.w_gate"], p[f"layers.{i}.mlp.w_up"], p[f"layers.{i}.mlp.w_down"])
        new_states.append(st)
    return eq.rms_norm(x, p["final_norm"], config.norm_eps) @ p["lm_head"], new_states


def model_forward(config, params: dict, inputs, states: list | None = None):
    """The protocol shared by the layer and the LM: (outputs, list of per-layer states), for either kind."""
    if config.kind == "lm":
        return lm_forward(config, params, inputs, states)
    y, state = forward(config, params, inputs, None if states is None else states[0])
    return y, [state]


def model_init_params(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters of a layer (``init_params``) or of the LM (``lm_init_params``)."""
    return lm_init_params(config, seed) if config.kind == "lm" else init_params(config, seed)

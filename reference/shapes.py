"""Parameter and state names and shapes (SPEC.md §3.1, §4.2, §9): what every package builds and checks against.

Shape names: B batch, H query heads, Hkv key/value heads, dk key dim, dv value dim, D model
width, F feed-forward width, V vocabulary, n pending tokens (0 <= n < N).
"""
from __future__ import annotations

ATTN_PARAMS = ("wq", "wk", "wv", "wo", "beta")  # SPEC.md §3.1, in this order everywhere
STATE_FIELDS = ("M", "z", "k", "v")  # SPEC.md §4.2


def layer_param_shapes(c) -> dict[str, tuple[int, ...]]:
    """One attention layer (SPEC.md §3.1): wq (D, H*dk), wk (D, Hkv*dk), wv (D, Hkv*dv), wo (H*dv, D), beta (H,)."""
    return {
        "wq": (c.d_model, c.n_heads * c.d_key),
        "wk": (c.d_model, c.n_kv_heads * c.d_key),
        "wv": (c.d_model, c.n_kv_heads * c.d_value),
        "wo": (c.n_heads * c.d_value, c.d_model),
        "beta": (c.n_heads,),
    }


def lm_param_shapes(config) -> dict[str, tuple[int, ...]]:
    """The LM of SPEC.md §9; attention parameters are §3.1's under ``layers.{i}.attn.``."""
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embed": (V, D)}
    for i in range(config.n_layers):
        shapes[f"layers.{i}.attn_norm"] = (D,)
        shapes.update({f"layers.{i}.attn.{n}": s for n, s in layer_param_shapes(config.attn).items()})
        shapes[f"layers.{i}.mlp_norm"] = (D,)
        shapes[f"layers.{i}.mlp.w_gate"] = (D, F)
        shapes[f"layers.{i}.mlp.w_up"] = (D, F)
        shapes[f"layers.{i}.mlp.w_down"] = (F, D)
    shapes["final_norm"] = (D,)
    shapes["lm_head"] = (D, V)
    return shapes


def param_shapes(config) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes of every parameter of ``config``: a layer (§3.1) or the LM (§9)."""
    if config.kind == "model":
        raise ValueError(f"config: expected an LMConfig or an InfiniConfig (the spec's parameter layouts), got a "
                         f"ModelConfig {config.name!r}: its weights are its own module's parameters, by their names")
    return lm_param_shapes(config) if config.kind == "lm" else layer_param_shapes(config)


def attn_prefix(config, layer: int) -> str:
    """The name prefix of attention layer ``layer``'s parameters: "" for a layer, "layers.{i}.attn." for the LM."""
    return f"layers.{layer}.attn." if config.kind == "lm" else ""


def state_shapes(attn, batch: int, pending: int) -> dict[str, tuple[int, ...]]:
    """One layer's state (SPEC.md §4.2): M (B, Hkv, dk, dv), z (B, Hkv, dk), k (B, Hkv, n, dk), v (B, Hkv, n, dv)."""
    B, Hkv, dk, dv = batch, attn.n_kv_heads, attn.d_key, attn.d_value
    return {"M": (B, Hkv, dk, dv), "z": (B, Hkv, dk), "k": (B, Hkv, pending, dk), "v": (B, Hkv, pending, dv)}

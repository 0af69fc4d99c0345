"""Built-in model presets for `infini export`, the tests, the demo and the benchmarks.

  tiny   a 2-layer LM that exports and self-checks in about a second (tests, CI);
  small  a 4-layer LM that streams a million tokens through ONNX Runtime on two CPU cores in
         a few minutes (the demo and the speed/memory benchmarks);
  paper  the paper's 12-layer long-context model (H = 8, dk = dv = 128, N = 2048, D = 1024;
         arXiv 2404.07143 §4.1), used for the state-size table. Its attention layer exports
         in seconds; the whole LM (~200M parameters) exports too, but slowly.
"""
from __future__ import annotations

import numpy as np

from ..reference import InfiniConfig, LMConfig, model_init_params
from ..reference.shapes import attn_prefix

PRESETS: dict[str, LMConfig] = {
    "tiny": LMConfig(
        vocab_size=64, n_layers=2, d_ff=48,
        attn=InfiniConfig(d_model=16, n_heads=4, n_kv_heads=2, d_key=8, d_value=6, segment_len=8,
                          update="delta", rope_theta=10000.0)),
    "small": LMConfig(
        vocab_size=256, n_layers=4, d_ff=512,
        attn=InfiniConfig(d_model=128, n_heads=4, n_kv_heads=2, d_key=32, d_value=32, segment_len=256,
                          update="delta", rope_theta=10000.0)),
    "paper": LMConfig(
        vocab_size=32000, n_layers=12, d_ff=4096,
        attn=InfiniConfig(d_model=1024, n_heads=8, n_kv_heads=8, d_key=128, d_value=128, segment_len=2048,
                          update="linear", rope_theta=10000.0)),
}


def preset_config(name: str, kind: str = "lm") -> LMConfig | InfiniConfig:
    """The preset's LMConfig (kind "lm") or its attention layer's InfiniConfig (kind "layer")."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    if kind not in ("lm", "layer"):
        raise ValueError(f"kind: expected 'lm' or 'layer', got {kind!r}")
    return PRESETS[name] if kind == "lm" else PRESETS[name].attn


def preset_params(config: LMConfig | InfiniConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters in the reference layouts (float64); beta spread over [-2, 2] so the
    gate is exercised on both sides."""
    params = model_init_params(config, seed)
    for i in range(config.n_layers):
        params[attn_prefix(config, i) + "beta"] = _spread_beta(config.attn.n_heads, i)
    return params


def _spread_beta(n_heads: int, shift: int) -> np.ndarray:
    return np.roll(np.linspace(-2.0, 2.0, n_heads), shift)

"""Adapter for ``cot-optimized-qkv`` 0.1.0 (PyPI): its ``infini_attention.InfiniAttention`` layer.

That distribution installs top-level modules named ``infini_attention``, ``model``, ``config``, ... into
site-packages, and its ``infini_attention.py`` shadows this package. So install it aside and point the
adapter at it:

    pip install --no-deps --target ~/cot_qkv cot-optimized-qkv      # torch is already here
    INFINI_COT_QKV_DIR=~/cot_qkv infini conformance \
        --impl infini_attention.conformance.adapters.cot_optimized_qkv:make

What the adapter maps (SPEC.md §3.1): the fused ``qkv`` Linear (their ``reshape(B, T, 3, H, d)`` is q, k,
v column blocks in the spec's head layout), ``out_proj`` (its bias set to 0), ``gate_beta`` (1, H, 1, 1).
What the layer ties, declared as pins: ``embed_dim = n_heads * head_dim`` (``d_model: "heads"``) and
d_value = d_key; RoPE is theirs (``use_rope``: half pairs, theta 10000) or off. Streaming is their own
API, ``forward_segments(x, initial_memory=(M, z))``, which cuts a call into segments from the call's
start: calls are whole segments (no "chunked").
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..contract import NotSupported, UsageError
from .helpers import CanonicalState, TorchAdapter, fused_qkv, linear, torch

ENV = "INFINI_COT_QKV_DIR"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def their_module():
    """Their ``infini_attention.py``, loaded from $INFINI_COT_QKV_DIR under another name (and their ``model``
    module, which their layer imports by that name for RoPE)."""
    if "cot_qkv_infini_attention" in sys.modules:
        return sys.modules["cot_qkv_infini_attention"]
    where = os.environ.get(ENV)
    if not where or not (Path(where) / "infini_attention.py").is_file():
        raise UsageError(f"{ENV}: expected a directory holding cot-optimized-qkv's infini_attention.py (pip install "
                         f"--no-deps --target DIR cot-optimized-qkv), got {where!r}")
    model = sys.modules.get("model")
    if model is None:
        sys.modules["model"] = _load("model", Path(where) / "model.py")
    elif not str(getattr(model, "__file__", "")).startswith(str(Path(where))):
        raise UsageError(f"{ENV}: another module named 'model' is already imported ({model!r}); their layer imports "
                         f"RoPE from a module of that name")
    module = _load("cot_qkv_infini_attention", Path(where) / "infini_attention.py")
    sys.modules["cot_qkv_infini_attention"] = module
    return module


class CotOptimizedQKV(TorchAdapter):
    capabilities = {"delta", "rope", "canonical_state", "grad", "float32", "float64"}
    config_pins = {"d_model": "heads", "d_value": "d_key", "rope_style": "half"}

    def build(self, c):
        if c.n_kv_heads != c.n_heads or c.scale is not None:
            raise NotSupported("no grouped-query attention; scale 1/sqrt(head_dim)")
        if c.rope_theta not in (None, 10000.0):
            raise NotSupported("RoPE base fixed at 10000 (or RoPE off)")
        ia = their_module()
        cfg = ia.InfiniAttentionConfig(embed_dim=c.d_model, num_heads=c.n_heads, dropout=0.0,
                                       use_rope=c.rope_theta is not None, max_seq_len=max(2, c.segment_len),
                                       segment_size=c.segment_len, use_delta_rule=c.update == "delta")
        return ia.InfiniAttention(cfg)

    def weights(self, p):
        m, H = self.module, self.config.n_heads
        return {**linear(m, "qkv", fused_qkv(p)), **linear(m, "out_proj", p["wo"]),
                "gate_beta": p["beta"].reshape(1, H, 1, 1)}

    def step(self, x, state):
        memory = None if state is None else state.inner
        if x.shape[1] == 0:
            return x, state if state is not None else CanonicalState(None, *self._zeros(x))
        y, (M, z) = self.call(x, initial_memory=memory, method="forward_segments")
        return y, CanonicalState((M, z), M, z[..., 0])

    def _zeros(self, x):
        c = self.config
        return (torch.zeros(x.shape[0], c.n_heads, c.d_key, c.d_value, dtype=x.dtype),
                torch.zeros(x.shape[0], c.n_heads, c.d_key, dtype=x.dtype))


make = CotOptimizedQKV.factory()

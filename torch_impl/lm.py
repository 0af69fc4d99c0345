"""InfiniTransformerLM: the minimal Infini-Transformer language model (reference/lm.py, SPEC.md §9).

Module attribute names are chosen so that `named_parameters()` yields exactly the
reference's parameter names ("embed", "layers.{i}.attn_norm", "layers.{i}.attn.wq", ...,
"final_norm", "lm_head"): the numpy <-> torch name mapping is the identity, and
`load_numpy_params` / `numpy_params` need no renaming table.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from infini_attention.reference import InfiniState, LMConfig
from infini_attention.reference.validate import check_token_ids, is_integer_dtype

from .layer import InfiniAttention
from .params import load_arrays, to_numpy
from .validation import check_dtype


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * w, computed in at least float32."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    out = xf / torch.sqrt((xf * xf).mean(dim=-1, keepdim=True) + eps)
    return out.to(x.dtype) * w


class Block(nn.Module):
    """h = x + attn(rms_norm(x)); out = h + mlp(rms_norm(h)). Norm weights are bare
    Parameters so their names are "layers.{i}.attn_norm" / "layers.{i}.mlp_norm"."""

    def __init__(self, config: LMConfig, detach_every, check_values, dtype, device, state_dtype=None):
        super().__init__()
        D = config.d_model
        self.norm_eps = config.norm_eps
        self.attn_norm = nn.Parameter(torch.ones(D, dtype=dtype, device=device))
        self.attn = InfiniAttention(config.attn, detach_every=detach_every, check_values=check_values,
                                    dtype=dtype, device=device, state_dtype=state_dtype)
        self.mlp_norm = nn.Parameter(torch.ones(D, dtype=dtype, device=device))
        self.mlp = SwiGLU(D, config.d_ff, dtype=dtype, device=device)

    def forward(self, x, state=None, **kw):
        a, state = self.attn(rms_norm(x, self.attn_norm, self.norm_eps), state, **kw)
        h = x + a
        return h + self.mlp(rms_norm(h, self.mlp_norm, self.norm_eps)), state


class SwiGLU(nn.Module):
    """(silu(x @ w_gate) * (x @ w_up)) @ w_down, weights in (in, out) layout like the reference."""

    def __init__(self, d_model: int, d_ff: int, dtype=None, device=None):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.w_gate = nn.Parameter(torch.randn(d_model, d_ff, **kw) * d_model**-0.5)
        self.w_up = nn.Parameter(torch.randn(d_model, d_ff, **kw) * d_model**-0.5)
        self.w_down = nn.Parameter(torch.randn(d_ff, d_model, **kw) * d_ff**-0.5)

    def forward(self, x):
        return (F.silu(x @ self.w_gate) * (x @ self.w_up)) @ self.w_down


class InfiniTransformerLM(nn.Module):
    """tokens (B, T) int64 -> logits (B, T, vocab_size); one TorchInfiniState per layer."""

    def __init__(self, config: LMConfig, *, detach_every: int | None = None, check_values: bool = True,
                 dtype: torch.dtype | None = None, device=None, state_dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(config, LMConfig):
            raise ValueError(f"config: expected an LMConfig, got {type(config).__name__}")
        check_dtype(dtype)
        self.config, self.check_values = config, check_values
        kw = {"dtype": dtype, "device": device}
        D, V = config.d_model, config.vocab_size
        self.embed = nn.Parameter(torch.randn(V, D, **kw))  # (V, D): N(0, 1) like the reference
        self.layers = nn.ModuleList(
            Block(config, detach_every, check_values, dtype, device, state_dtype) for _ in range(config.n_layers)
        )
        self.final_norm = nn.Parameter(torch.ones(D, **kw))
        self.lm_head = nn.Parameter(torch.randn(D, V, **kw) * D**-0.5)  # (D, V)

    # ------------------------------------------------------------ numpy parameter dicts

    @classmethod
    def from_numpy(cls, config: LMConfig, params: dict, *, dtype=torch.float64, device=None, **kw):
        model = cls(config, dtype=dtype, device=device, **kw)
        model.load_numpy_params(params)
        return model

    def load_numpy_params(self, params: dict) -> None:
        load_arrays(self, self.config, params)

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {n: to_numpy(p) for n, p in self.named_parameters()}  # the reference names, by design

    # ---------------------------------------------------------- safetensors (pretrained.py)

    def save_pretrained(self, directory):
        """``directory``/config.json + model.safetensors (reference names, this model's dtype)."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, device=None, **kw):
        """The model saved by ``save_pretrained`` (a directory, or a self-describing .safetensors file)."""
        from .pretrained import from_pretrained

        return from_pretrained(cls, path, dtype=dtype, device=device, **kw)

    # ---------------------------------------------------------------------- forward

    def init_states(self, batch: int) -> list:
        return [blk.attn.init_state(batch) for blk in self.layers]

    def forward(self, tokens: torch.Tensor, states=None, **kw):
        """tokens (B, T) integer -> (logits (B, T, V), list of per-layer TorchInfiniState).

        `states` may also be a list of reference InfiniState (converted)."""
        c = self.config
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"tokens: expected an integer tensor of shape (B, T), got {type(tokens).__name__}")
        if self.check_values:  # reads the ids (a host sync): off for tracing, like the layers' value checks
            check_token_ids(c.vocab_size, tokens)
        elif tokens.ndim != 2 or not is_integer_dtype(tokens.dtype):
            check_token_ids(c.vocab_size, tokens[:0])  # shape and dtype only
        if states is not None and (not isinstance(states, (list, tuple)) or len(states) != c.n_layers):
            got = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"states: expected None or a list of {c.n_layers} states, got {got}")
        x = F.embedding(tokens, self.embed)  # (B, T, D)
        new_states = []
        for i, blk in enumerate(self.layers):
            x, st = blk(x, None if states is None else states[i], **kw)
            new_states.append(st)
        return rms_norm(x, self.final_norm, c.norm_eps) @ self.lm_head, new_states  # (B, T, V)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, states=None):
        """Greedy decoding: feed the prompt in one call, then one token per call (constant memory).

        Returns (tokens (B, T0 + max_new_tokens), states after the last fed token)."""
        logits, states = self(prompt, states)
        out = [prompt]
        for i in range(max_new_tokens):
            nxt = logits[:, -1:].argmax(dim=-1)  # (B, 1)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits, states = self(nxt, states)
        return torch.cat(out, dim=1), states

    def states_to_reference(self, states) -> list[InfiniState]:
        return [s.to_reference() for s in states]

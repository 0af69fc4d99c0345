"""Bring your model: a small GPT-style LM built on InfiniAttention, exported with `infini export --module`.

    infini export --module examples/custom_model.py:build -o custom.onnx          # its random weights
    python examples/custom_model.py custom.safetensors                             # save some weights ...
    infini export --module examples/custom_model.py:build --checkpoint custom.safetensors -o custom.onnx
    infini stream custom.onnx --generate 4096 --then-generate 8

What makes it exportable (the streaming protocol, torch_impl/protocol.py): ``forward(ids, states)`` returns
``(logits, states)``, ``states`` one per InfiniAttention in module order (None starts a stream); the
attribute ``vocab_size`` says it takes token ids. LayerNorm, GELU MLP, learned positions (read from the stream
position the states carry) and tied embeddings are its own code, traced as they are.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from infini_attention.reference import InfiniConfig
from infini_attention.torch_impl import InfiniAttention

ATTN = InfiniConfig(d_model=32, n_heads=4, n_kv_heads=2, d_key=8, d_value=8, segment_len=16, rope_theta=10000.0)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        D = ATTN.d_model
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(D), InfiniAttention(ATTN), nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x, state):
        a, state = self.attn(self.ln1(x), state)
        x = x + a
        return x + self.mlp(self.ln2(x)), state


class TinyGPT(nn.Module):
    vocab_size = 256  # the protocol's declaration: token ids in [0, 256)

    def __init__(self, n_layers: int = 2, max_positions: int = 1024):
        super().__init__()
        self.tok, self.pos = nn.Embedding(self.vocab_size, ATTN.d_model), nn.Embedding(max_positions, ATTN.d_model)
        self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(ATTN.d_model)

    def forward(self, ids, states=None):
        states = states or [b.attn.init_state(ids.shape[0]) for b in self.blocks]
        start = states[0].segments * ATTN.segment_len + states[0].k.shape[2]  # stream position of ids[:, 0]
        x = self.tok(ids) + self.pos((start + torch.arange(ids.shape[1])) % self.pos.num_embeddings)
        new = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, state)
            new.append(state)
        return F.linear(self.ln_f(x), self.tok.weight), new  # tied output embedding


def build() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT()


if __name__ == "__main__":  # weights (here: other random ones) saved as --checkpoint reads them: state_dict names
    from safetensors.torch import save_model

    torch.manual_seed(1)
    save_model(TinyGPT(), sys.argv[1] if len(sys.argv) > 1 else "custom.safetensors")  # tied weights stored once

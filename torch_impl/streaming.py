"""The streaming protocol shared by the layer and the LM, and running a stream in several calls.

A streaming model is ``forward(inputs, state(s)) -> (outputs, state(s))``; the layer takes and returns one
state, the LM, and any other model that follows the protocol (protocol.py), a list with one per
``InfiniAttention`` in module order. `model_step` gives all the list's shape, so code that serves any
(export, self-check, demo) needs no type test.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from infini_attention.reference import run_split


def attention_layers(model) -> list:
    """The model's ``InfiniAttention`` layers in module order (the layer itself for a layer)."""
    from .layer import InfiniAttention

    return [m for m in model.modules() if isinstance(m, InfiniAttention)]


def model_step(model, inputs, states=None):
    """(outputs, list of per-layer states) for a layer or any model of the protocol (the LM, protocol.py);
    ``states`` a list (or None: a new stream)."""
    from .layer import InfiniAttention

    if not isinstance(model, InfiniAttention):
        out, states = model(inputs, states)
        return out, list(states)
    y, state = model(inputs, None if states is None else states[0])
    return y, [state]


@contextmanager
def piece_mode(model):
    """Run every attention layer of ``model`` in piece mode (one segment piece per call, naive.py) inside."""
    layers = attention_layers(model)
    saved = [(m.piece_mode, m.check_values) for m in layers]
    for m in layers:
        m.piece_mode, m.check_values = True, False
    try:
        yield model
    finally:
        for m, (mode, check) in zip(layers, saved):
            m.piece_mode, m.check_values = mode, check


def run_chunks(module, x: torch.Tensor, sizes: Sequence[int], state=None, **kw):
    """Feed x (B, T, ...) to `module` in consecutive calls of `sizes` tokens (summing to T).

    Works for InfiniAttention (x (B, T, D), one state) and InfiniTransformerLM
    (tokens (B, T), list of states). Returns (outputs concatenated over T, final state)."""
    outs, state = run_split(lambda chunk, s: module(chunk, s, **kw), x, sizes, state)
    return torch.cat(outs, dim=1), state


def model_from_numpy(config, params: dict, **kw):
    """``InfiniTransformerLM`` for an LMConfig, ``InfiniAttention`` for an InfiniConfig, holding ``params``."""
    from .layer import InfiniAttention
    from .lm import InfiniTransformerLM

    return (InfiniTransformerLM if config.kind == "lm" else InfiniAttention).from_numpy(config, params, **kw)

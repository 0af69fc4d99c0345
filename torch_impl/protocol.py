"""The streaming protocol a torch model follows to be exported (``infini export --module``), and checking it.

A streaming model is any ``nn.Module`` built on ``InfiniAttention`` layers whose

    forward(inputs, states) -> (outputs, states)

  inputs   token ids (B, T) int64, or vectors (B, T, d_input) in the model's dtype;
  states   None (a new stream) or a list of ``TorchInfiniState``, one per ``InfiniAttention`` in module
           order (``attention_layers``); the model hands ``states[i]`` to its i-th layer;
  outputs  (B, T, W): logits, or vectors;
  returned states: the list of what each layer returned, in the same order.

One input and one output tensor; the model declares which input it takes by one attribute: ``vocab_size``
(int: token ids in [0, vocab_size)) or ``d_input`` (int: vectors). Everything between the layers (norms,
MLPs, embeddings, positions, tied weights) is the model's own code, traced as it is; it may read the stream
position from the states (``segments * segment_len + pending`` of any layer). Each layer runs once per call
and all share one segment_len (the stream is cut into segments of one length); they may differ in anything
else. The spec's LM (``InfiniTransformerLM``) and a single ``InfiniAttention`` follow it as they are.

`model_config` checks all of this on a real call and returns the config that describes the exported graph
(``reference.ModelConfig``; the spec's own config for the spec's models); every failure is one ValueError
naming the model and what is missing.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from infini_attention.reference import InfiniConfig, LMConfig, ModelConfig

from .state import TorchInfiniState
from .streaming import attention_layers

PROBE_TOKENS = 3  # tokens of the checking call (any number works: the layers' eager forward takes any)


def model_config(model, name: str = ""):
    """The config of ``model``'s exported graph after checking the protocol (module docstring).

    ``name``: how to call the model in messages and in the config (e.g. ``pkg.models:build``)."""
    from .layer import InfiniAttention
    from .lm import InfiniTransformerLM

    where = f"model {name or type(model).__name__}"
    if not isinstance(model, nn.Module):
        raise ValueError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{where}: expected at least one torch_impl.InfiniAttention among its modules, found none "
                         f"(its modules: {sorted({type(m).__name__ for m in model.modules()})[:6]})")
    if isinstance(model, InfiniAttention) or (isinstance(model, InfiniTransformerLM)
                                              and type(model).forward is InfiniTransformerLM.forward):
        return model.config  # the spec's own models: the spec's configs describe them (a subclass's own forward not)
    lengths = [m.config.segment_len for m in layers]
    if len(set(lengths)) > 1:
        raise ValueError(f"{where}: expected one segment_len for all its InfiniAttention layers (a stream is cut into "
                         f"segments of one length), got {lengths}")
    takes_tokens, width = _declared_input(model, where)
    _check_signature(model, where)
    out = _probe(model, layers, takes_tokens, width, where)
    return ModelConfig(tuple(m.config for m in layers), width, out, takes_tokens, name)


def _declared_input(model, where: str) -> tuple[bool, int]:
    from .lm import InfiniTransformerLM

    vocab, d_input = getattr(model, "vocab_size", None), getattr(model, "d_input", None)
    if vocab is None and d_input is None and isinstance(model, InfiniTransformerLM):
        vocab = model.config.vocab_size  # a subclass of the spec's LM with a forward of its own
    if (vocab is None) == (d_input is None):
        got = "both" if vocab is not None else "neither"
        raise ValueError(f"{where}: expected one attribute declaring its input, vocab_size (token ids) or d_input "
                         f"(vectors), got {got}")
    value = vocab if vocab is not None else d_input
    attr = "vocab_size" if vocab is not None else "d_input"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: attribute {attr}: expected an integer >= 1, got {value!r}")
    return vocab is not None, value


def _check_signature(model, where: str) -> None:
    try:
        inspect.signature(model.forward).bind(None, None)
    except TypeError as exc:
        raise ValueError(f"{where}: forward: expected forward(inputs, states) -> (outputs, states), its signature "
                         f"{inspect.signature(model.forward)} does not take two arguments ({exc})") from None


def _probe(model, layers, takes_tokens: bool, width: int, where: str) -> int:
    """One call on fresh states: each layer called once, with states[i], and its returned state returned at i.
    Returns the output width."""
    B, T = 2, PROBE_TOKENS
    p = layers[0].wq
    x = (torch.zeros(B, T, dtype=torch.int64, device=p.device) if takes_tokens
         else torch.zeros(B, T, width, dtype=p.dtype, device=p.device))
    states = [m.init_state(B) for m in layers]
    calls = {id(m): [] for m in layers}

    def record(module, args, kwargs, result):
        given = args[1] if len(args) > 1 else kwargs.get("state")
        calls[id(module)].append((given, result[1] if isinstance(result, tuple) and len(result) == 2 else None))

    hooks = [m.register_forward_hook(record, with_kwargs=True) for m in layers]
    try:
        with torch.no_grad():
            result = model(x, states)
    except Exception as exc:  # noqa: BLE001 - the user's forward: any failure is reported as the protocol's
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{where}: forward(inputs, states) failed on {tuple(x.shape)} {x.dtype} inputs and a list of "
                         f"{len(layers)} fresh states ({type(exc).__name__}: {text})") from None
    finally:
        for h in hooks:
            h.remove()
    names = {id(m): n for n, m in model.named_modules() if id(m) in calls}
    for i, m in enumerate(layers):
        seen = calls[id(m)]
        if len(seen) != 1:
            raise ValueError(f"{where}: InfiniAttention {names[id(m)]!r} (layer {i}): expected one call per forward "
                             f"(one state per layer), got {len(seen)}")
        if seen[0][0] is not states[i]:
            raise ValueError(f"{where}: InfiniAttention {names[id(m)]!r} (layer {i}): expected to be given states[{i}] "
                             "(states are in module order), got another object")
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = f"a {type(result).__name__}" + (f" of {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise ValueError(f"{where}: forward: expected to return (outputs, states), got {got}")
    out, new = result
    if not isinstance(new, (list, tuple)) or len(new) != len(layers):
        got = f"{len(new)} items" if isinstance(new, (list, tuple)) else type(new).__name__
        raise ValueError(f"{where}: forward: expected the returned states to be a list of {len(layers)} (one per "
                         f"InfiniAttention), got {got}")
    returned_by = {id(calls[id(m)][0][1]): names[id(m)] for m in layers}
    for i, m in enumerate(layers):
        if not isinstance(new[i], TorchInfiniState) or new[i] is not calls[id(m)][0][1]:
            got = (f"the state of InfiniAttention {returned_by[id(new[i])]!r}" if id(new[i]) in returned_by
                   else f"a {type(new[i]).__name__} no layer returned")
            raise ValueError(f"{where}: forward: returned states[{i}]: expected the state InfiniAttention "
                             f"{names[id(m)]!r} returned (states are in module order), got {got}")
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != (B, T) \
            or not out.is_floating_point():
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{where}: forward: expected outputs of shape (B={B}, T={T}, width) floating point, got {got}")
    return int(out.shape[2])


def is_spec_config(config) -> bool:
    """The spec's own configs (the float64 reference computes them); a ModelConfig is the model's own."""
    return isinstance(config, (LMConfig, InfiniConfig))

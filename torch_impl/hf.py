"""Hugging Face Llama-family checkpoints -> the spec's Infini-Transformer LM (SPEC.md §9).

The spec's LM is a Llama block (pre-RMSNorm, SwiGLU, RoPE "half", GQA, no biases) with Infini-attention
in place of full attention, so a ``LlamaForCausalLM`` (and a ``MistralForCausalLM``, same shape) maps
tensor for tensor; only ``beta`` (one gate per head and layer) is new:

    embed_tokens.weight (V, D)            -> embed (V, D)
    input_layernorm / post_attention_layernorm / norm .weight -> attn_norm / mlp_norm / final_norm
    self_attn.{q,k,v,o}_proj.weight (out, in) -> attn.{wq,wk,wv,wo} (in, out): transposed (nn.Linear is x @ W.T)
    mlp.{gate,up,down}_proj.weight        -> mlp.{w_gate,w_up,w_down}, transposed
    lm_head.weight (V, D)                 -> lm_head (D, V); tied embeddings: embed.T (SPEC §9 has no tying)

Heads: HF views q_proj's output as (..., H, head_dim), so head h is columns h*hd:(h+1)*hd of x @ wq (SPEC
§3.1); ``repeat_kv`` repeats each key/value head G times in a row, i.e. query head h reads kv head h // G
(SPEC §3.2). RoPE: HF's ``rotate_half`` with ``inv_freq = theta^(-2j/hd)`` is the spec's ``rope_style="half"``;
the scale is head_dim**-0.5, the spec's default. Positions differ on purpose: HF counts from the stream's
start, the spec from the segment's (SPEC §5.1), so the two agree on the stream's first segment.

What the spec cannot express is refused by name (one ValueError line): RoPE scaling, a sliding window
shorter than the segment, biases, activations other than SiLU, an odd head_dim, and any tensor the mapping
does not consume (nothing is dropped silently). A sliding window of at least ``segment_len`` tokens is
accepted: local attention never looks further back than the segment, so the window never binds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from infini_attention.reference import InfiniConfig, LMConfig, lm_param_shapes

SUPPORTED = ("llama", "mistral")
# model types with the Llama layout plus something the spec has no parameter for
REFUSED = {"qwen2": "q/k/v biases (q_proj/k_proj/v_proj.bias; SPEC.md §3.1 has no biases)",
           "qwen3": "q/k RMSNorm inside attention (q_norm/k_norm; SPEC.md §3 has none)",
           "gemma": "embedding scaling and (1 + w) RMSNorm weights (SPEC.md §9 has neither)",
           "phi3": "fused qkv_proj/gate_up_proj weights and partial rotary (not the Llama layout)"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry; recomputed from rope_theta


def _refuse(feature: str, detail: str) -> None:
    raise ValueError(f"from_hf: {feature}: {detail}, which the spec cannot express")


def _rope(hf: dict) -> float:
    """rope_theta, refusing every RoPE variant but the plain one (transformers 5 ``rope_parameters``,
    transformers 4 ``rope_theta`` + ``rope_scaling``)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params and not {"rope_type", "rope_theta"} & set(params):
        _refuse("rope_parameters", f"per-layer-type RoPE {sorted(params)}")
    params = params if isinstance(params, dict) else {}
    for src in (params, hf.get("rope_scaling") or {}):
        kind = src.get("rope_type", src.get("type", "default"))
        if kind != "default":
            _refuse("rope_scaling", f"rope_type {kind!r} (scaled RoPE positions)")
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if factor not in (None, 1, 1.0):
        _refuse("partial_rotary_factor", f"{factor} (RoPE on part of each head)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, *, segment_len: int, update: str = "linear", gate_on: str = "memory",
                   first_segment: str = "gated", eps: float = 1e-6) -> LMConfig:
    """The LMConfig of a Hugging Face config dict (``model.config.to_dict()`` or config.json), or a refusal."""
    mt = hf.get("model_type")
    if mt in REFUSED:
        _refuse(f"model_type {mt!r}", REFUSED[mt])
    if mt not in SUPPORTED:
        raise ValueError(f"from_hf: model_type: expected one of {list(SUPPORTED)} (the Llama attention/MLP shape of "
                         f"SPEC.md §9), got {mt!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            _refuse(flag, "biases on the projections (SPEC.md §3.1, §9 have none)")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        _refuse("hidden_act", f"{act!r} (SPEC.md §9's MLP is SwiGLU: silu(x @ w_gate) * (x @ w_up))")
    theta = _rope(hf)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if window is not None and window < segment_len:
        _refuse("sliding_window", f"{window} < segment_len={segment_len} (a window that binds inside a segment; "
                                  "a window >= segment_len never binds and is accepted)")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types - {"full_attention", "sliding_attention"}:
        _refuse("layer_types", f"{sorted(layer_types)} (attention variants)")
    need = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
    missing = [k for k in need if not isinstance(hf.get(k), int)]
    if missing:
        raise ValueError(f"from_hf: config: expected integers {list(need)}, missing or not integers {missing}")
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    hd = hf.get("head_dim") or D // H
    if hd % 2:
        _refuse("head_dim", f"{hd} is odd (RoPE rotates pairs)")
    attn = InfiniConfig(d_model=D, n_heads=H, n_kv_heads=hf.get("num_key_value_heads") or H, d_key=hd, d_value=hd,
                        segment_len=segment_len, update=update, rope_theta=theta, rope_style="half", eps=eps,
                        gate_on=gate_on, first_segment=first_segment)
    return LMConfig(vocab_size=hf["vocab_size"], n_layers=hf["num_hidden_layers"], d_ff=hf["intermediate_size"],
                    attn=attn, norm_eps=float(hf.get("rms_norm_eps", 1e-6)))


def _layer_map(i: int) -> dict[str, tuple[str, bool]]:
    """reference name -> (HF name without the 'model.' prefix, transpose?) for layer i."""
    a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
    return {f"layers.{i}.attn_norm": (f"layers.{i}.input_layernorm.weight", False),
            f"layers.{i}.mlp_norm": (f"layers.{i}.post_attention_layernorm.weight", False),
            **{f"layers.{i}.attn.w{p}": (f"{a}{p}_proj.weight", True) for p in "qkvo"},
            **{f"layers.{i}.mlp.w_{p}": (f"{m}{p}_proj.weight", True) for p in ("gate", "up", "down")}}


def params_from_hf(config: LMConfig, state: dict, *, tied: bool, beta_init=0.0) -> dict[str, np.ndarray]:
    """Reference-layout float64 params from an HF state dict; every tensor must be consumed, shapes checked."""
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    base = "model." if any(k.startswith("model.") for k in state) else ""
    names = {"embed": (f"{base}embed_tokens.weight", False), "final_norm": (f"{base}norm.weight", False)}
    for i in range(config.n_layers):
        names.update({k: (base + hf, t) for k, (hf, t) in _layer_map(i).items()})
    names["lm_head"] = ("lm_head.weight", True)
    if "lm_head.weight" not in state:
        if not tied:
            raise ValueError("from_hf: state dict: expected 'lm_head.weight' (tie_word_embeddings is false), got none")
        names["lm_head"] = names["embed"][0], True  # tied: the output projection is embed.T
    shapes = lm_param_shapes(config)
    params = {}
    for ref, (hf, transpose) in names.items():
        if hf not in state:
            raise ValueError(f"from_hf: state dict: expected tensor {hf!r} (-> {ref}), missing")
        t = state[hf].detach().to("cpu", torch.float64)
        t = t.T if transpose else t
        if tuple(t.shape) != shapes[ref]:
            got = tuple(state[hf].shape)
            want = shapes[ref][::-1] if transpose else shapes[ref]
            raise ValueError(f"from_hf: tensor {hf!r}: expected shape {want} from the config, got {got}")
        params[ref] = t.numpy().copy()
    left = sorted(set(state) - {hf for hf, _ in names.values()})
    if left:
        _refuse(f"tensor {left[0]!r}", f"{len(left)} tensor(s) with no place in SPEC.md §9 (e.g. {left[:3]})")
    H = config.attn.n_heads
    beta = np.asarray(beta_init, dtype=np.float64) if isinstance(beta_init, (int, float, list, tuple, np.ndarray)) \
        else np.array(np.nan)
    if beta.shape not in ((), (H,)) or not np.all(np.isfinite(beta)):
        raise ValueError(f"from_hf: beta_init: expected a finite number or {H} of them (one per head), "
                         f"got {beta_init!r}")
    for i in range(config.n_layers):
        params[f"layers.{i}.attn.beta"] = np.broadcast_to(beta, (H,)).copy()
    return params


def read_hf_directory(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a saved HF model: model.safetensors or a sharded index; no transformers."""
    from .pretrained import _safetensors

    load_file = _safetensors()[0].load_file
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ValueError(f"from_hf: {str(path)!r}: expected a Hugging Face model directory with config.json, "
                         "missing config.json")
    hf = json.loads(cfg.read_text())
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        raise ValueError(f"from_hf: {str(path)!r}: expected model.safetensors or model.safetensors.index.json "
                         "(other formats: load the model with transformers and pass it)")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError
            raise ValueError(f"from_hf: {str(f)!r}: expected a safetensors file, cannot read it "
                             f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})") from None
    return hf, state


def from_hf(source, *, segment_len: int, update: str = "linear", beta_init=-4.0, gate_on: str = "memory",
            first_segment: str = "gated", eps: float = 1e-6) -> tuple[LMConfig, dict[str, np.ndarray]]:
    """(LMConfig, reference-layout float64 params) of a Hugging Face Llama/Mistral model.

    source: a ``transformers`` model (``LlamaForCausalLM``, ...) or its ``save_pretrained`` directory.
    beta_init: every gate's starting value (a number, or one per head). The default -4 puts the gate
    at sigmoid(-4) = 0.018 on the memory (gate_on="memory"): inside a segment the converted model starts
    almost as the original and fine-tuning opens the memory."""
    if isinstance(source, (str, Path)):
        hf, state = read_hf_directory(source)
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf, state = source.config.to_dict(), source.state_dict()
    else:
        raise ValueError(f"from_hf: source: expected a transformers model or its directory, got "
                         f"{type(source).__name__}")
    config = config_from_hf(hf, segment_len=segment_len, update=update, gate_on=gate_on,
                            first_segment=first_segment, eps=eps)
    return config, params_from_hf(config, state, tied=bool(hf.get("tie_word_embeddings", False)),
                                  beta_init=beta_init)


def lm_from_hf(source, *, segment_len: int, dtype: torch.dtype = torch.float32, device=None, update: str = "linear",
               beta_init=-4.0, gate_on: str = "memory", first_segment: str = "gated", eps: float = 1e-6, **kw):
    """``InfiniTransformerLM`` holding ``from_hf(source, ...)``; ``kw`` go to the model (detach_every, ...)."""
    from .lm import InfiniTransformerLM

    config, params = from_hf(source, segment_len=segment_len, update=update, beta_init=beta_init, gate_on=gate_on,
                             first_segment=first_segment, eps=eps)
    return InfiniTransformerLM.from_numpy(config, params, dtype=dtype, device=device, **kw)

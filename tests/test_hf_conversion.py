"""torch_impl.hf: Hugging Face Llama-family models converted to the spec's LM (SPEC.md §3, §5.1, §9).

Exactness: on the stream's first segment with every gate on the local branch, the converted model IS the
HF model (causal attention over the segment, RoPE at positions 0..N-1), so its logits must equal HF's: that
pins the weight transposes, the head layout, GQA and RoPE. Every HF model is built from a small random
config here; nothing is downloaded.

HF computes RMSNorm and the RoPE tables in float32 even in a float64 model (1.7e-6 off in logits of size 6),
so for the float64 comparison those two methods are replaced by the same formulas in float64
(`_hf_float64`); the unmodified HF model is compared at float32 tolerance (`test_unpatched_hf_float32`).
"""
import json
import types

import numpy as np
import pytest
import torch

from infini_attention.reference.tolerances import assert_close
from infini_attention.torch_impl.hf import config_from_hf, from_hf, lm_from_hf, params_from_hf

transformers = pytest.importorskip("transformers", reason="the HF conversion tests need the 'hf' extra (transformers)")
N = 12  # the segment: every test feeds one segment (or less), where the conversion must be exact


def _rms_forward(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _rope_forward(self, x, position_ids):
    dim = 2 * self.inv_freq.shape[0]
    inv = 1.0 / (self.config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    f = position_ids[..., None].double() * inv
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _hf_float64(model):
    """HF's own modules, with the float32 upcasts of RMSNorm and the RoPE tables done in float64 instead."""
    patched = 0
    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            m.forward, patched = types.MethodType(_rms_forward, m), patched + 1
        elif name.endswith("RotaryEmbedding"):
            m.forward, patched = types.MethodType(_rope_forward, m), patched + 1
    assert patched >= 3  # the norms of every layer and the rotary embedding were found
    return model


def _build(kind="llama", dtype=torch.float64, seed=0, **overrides):
    """A small random HF model; weights non-trivial (norms away from 1) so that a wrong mapping shows."""
    torch.manual_seed(seed)
    kw = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
              num_hidden_layers=2, vocab_size=61, rms_norm_eps=1e-5, rope_theta=500.0, head_dim=12)
    kw.update(overrides)
    Config, Model = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                     "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
    model = Model(Config(**kw)).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if p.ndim == 1 else torch.randn_like(p) * 0.3)
    return model


def _compare(model, *, gate_on="memory", beta=-40.0, dtype=torch.float64, source=None, T=N):
    tokens = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens).logits
        lm = lm_from_hf(model if source is None else source, segment_len=N, dtype=dtype, beta_init=beta,
                        gate_on=gate_on)
        got, _ = lm(tokens)
    return got, expected


@pytest.mark.parametrize("kind, overrides", [
    ("llama", {}),                                                   # GQA 4:2, head_dim 12 != 32 / 4
    ("llama", {"num_key_value_heads": 1, "head_dim": 8}),            # multi-query
    ("mistral", {"sliding_window": None}),
    ("mistral", {"sliding_window": N}),                              # a window >= the segment never binds
], ids=["llama-gqa", "llama-mqa", "mistral", "mistral-window-ge-N"])
@pytest.mark.parametrize("gate_on, beta", [("memory", -40.0), ("local", 40.0)])
def test_logits_equal_hf_float64(kind, overrides, gate_on, beta):
    got, expected = _compare(_hf_float64(_build(kind, **overrides)), gate_on=gate_on, beta=beta)
    assert_close("logits", got.numpy(), expected.numpy(), "float64")
    assert (got - expected).abs().max().item() < 1e-12


def test_tied_embeddings_from_a_saved_directory(tmp_path):
    """tie_word_embeddings: lm_head becomes embed.T; read from save_pretrained's files (no lm_head stored)."""
    model = _hf_float64(_build(tie_word_embeddings=True))
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # what makes the directory path need the tying rule
    got, expected = _compare(model, source=tmp_path)
    assert_close("logits", got.numpy(), expected.numpy(), "float64")
    config, params = from_hf(tmp_path, segment_len=N)
    assert np.array_equal(params["lm_head"], params["embed"].T)


def test_unpatched_hf_float32():
    """The HF model as it is (float32 norms and RoPE, eager attention: repeat_kv), at float32 tolerance."""
    model = _build(dtype=torch.float32, attn_implementation="eager")
    got, expected = _compare(model, dtype=torch.float32)
    assert_close("logits", got.numpy(), expected.numpy(), "float32")


def test_beyond_one_segment_the_memory_takes_over():
    """Past the first segment the converted model is not full attention (it is Infini-attention): it differs
    from HF there while agreeing on the first segment, with the gate on the local branch."""
    model = _hf_float64(_build())
    got, expected = _compare(model, T=2 * N)
    assert (got[:, :N] - expected[:, :N]).abs().max() < 1e-12
    assert (got[:, N:] - expected[:, N:]).abs().max() > 1e-3


def test_repeat_kv_is_the_spec_gqa_mapping():
    """SPEC §3.2: query head h reads key/value head h // G; HF's repeat_kv gives exactly that."""
    from transformers.models.llama.modeling_llama import repeat_kv

    kv = torch.randn(2, 3, 5, 4)  # (B, Hkv, T, d)
    G = 4
    rep = repeat_kv(kv, G)
    assert rep.shape[1] == 3 * G
    for h in range(3 * G):
        assert torch.equal(rep[:, h], kv[:, h // G])


def test_default_gate_starts_near_the_original():
    config, params = from_hf(_build(), segment_len=N)
    assert config.attn.rope_style == "half" and config.attn.rope_theta == 500.0 and config.norm_eps == 1e-5
    assert all(np.all(params[f"layers.{i}.attn.beta"] == -4.0) for i in range(2))


def _hf_dict(**changes):
    base = _build().config.to_dict()
    base.update(changes)
    return base


@pytest.mark.parametrize("changes, feature", [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "rope_scaling: rope_type 'linear'"),
    ({"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling: rope_type 'dynamic'"),                                   # a transformers 4.x config
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor: 0.5"),
    ({"model_type": "mistral", "sliding_window": N - 1}, f"sliding_window: {N - 1} < segment_len={N}"),
    ({"attention_bias": True}, "attention_bias: biases"),
    ({"mlp_bias": True}, "mlp_bias: biases"),
    ({"model_type": "qwen2"}, "model_type 'qwen2': q/k/v biases"),
    ({"hidden_act": "gelu"}, "hidden_act: 'gelu'"),
    ({"head_dim": 7}, "head_dim: 7 is odd"),
    ({"layer_types": ["full_attention", "chunked_attention"]}, "layer_types:"),
    ({"model_type": "gpt2"}, "model_type: expected one of ['llama', 'mistral']"),
    ({"intermediate_size": None}, "missing or not integers ['intermediate_size']"),
])
def test_refusals_name_the_feature(changes, feature):
    with pytest.raises(ValueError) as info:
        config_from_hf(_hf_dict(**changes), segment_len=N)
    msg = str(info.value)
    assert feature in msg and "\n" not in msg


def test_transformers4_config_accepted():
    hf = _hf_dict(rope_parameters=None, rope_theta=321.0, rope_scaling=None)
    assert config_from_hf(hf, segment_len=N).attn.rope_theta == 321.0


def test_biases_in_the_weights_are_refused_not_dropped():
    """A bias tensor (or any tensor with no place in the spec) is never silently left out."""
    model = _build(attention_bias=True)
    with pytest.raises(ValueError, match="attention_bias"):
        from_hf(model, segment_len=N)
    plain = _build()
    config = config_from_hf(plain.config.to_dict(), segment_len=N)
    state = dict(plain.state_dict())
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(12)
    with pytest.raises(ValueError, match=r"tensor 'model.layers.0.self_attn.q_norm.weight'.*no place in SPEC"):
        params_from_hf(config, state, tied=False)


def test_tensor_not_matching_the_config_is_named():
    plain = _build()
    config = config_from_hf(plain.config.to_dict(), segment_len=N)
    state = dict(plain.state_dict())
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(41, 32)
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight': expected shape \(40, 32\) from the "
                                         r"config, got \(41, 32\)"):
        params_from_hf(config, state, tied=False)
    del state["lm_head.weight"]
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(40, 32)
    with pytest.raises(ValueError, match="expected 'lm_head.weight'"):
        params_from_hf(config, state, tied=False)


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(ValueError, match="missing config.json"):
        from_hf(tmp_path, segment_len=N)
    (tmp_path / "config.json").write_text(json.dumps(_hf_dict()))
    with pytest.raises(ValueError, match="expected model.safetensors"):
        from_hf(tmp_path, segment_len=N)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="expected a safetensors file, cannot read it"):
        from_hf(tmp_path, segment_len=N)


def test_finetune_backpropagates_through_the_memory():
    """Continual pre-training (torch_impl.finetune): the loss on the second segment reaches the first segment's
    tokens only through the memory; with full BPTT their embeddings move, with detach_every=1 they cannot."""
    from infini_attention.torch_impl.finetune import finetune, next_token_batch

    seg1, seg2 = np.arange(N) % 5, 5 + np.arange(N) % 5  # ids 0-4 only in segment 1, 5-9 only in segment 2
    tokens, targets, mask = next_token_batch(np.concatenate([seg1, seg2])[None])
    mask[:, :N] = False  # the loss sees segment 2 only
    moved = {}
    for detach in (None, 1):
        model = lm_from_hf(_build(dtype=torch.float32), segment_len=N, beta_init=0.0)
        before = model.embed.detach().clone()
        log = finetune(model, lambda step, rng: (tokens, targets, mask), steps=2, lr=1e-2, detach_every=detach,
                       progress=False)
        assert log["steps"] == 2 and len(log["losses"]) == 2 and log["tokens"] == 4 * N
        moved[detach] = (model.embed.detach() - before)[:5].abs().max().item()
        assert (model.embed.detach() - before)[5:10].abs().max().item() > 0  # segment 2's own tokens learn
    assert moved[None] > 1e-4 and moved[1] == 0.0


@pytest.mark.slow
def test_continual_example_end_to_end(tmp_path):
    """examples/continual/finetune.py, shortened: convert, fine-tune, save, export, stream in ORT, generate."""
    pytest.importorskip("onnxruntime")
    from examples.continual.finetune import main

    out = tmp_path / "run"
    assert main(["--steps", "3", "--batch", "2", "--max-len", "64", "--stream-len", "256", "--verify-every", "64",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["conversion_max_abs_diff"] < 1e-5
    s = report["stream"]
    assert s["same_tokens"] and s["checkpoints"] >= 4 and s["max_abs_diff"] < 1e-3 * max(1.0, s["max_abs_logit"])
    assert (out / "infini-llama" / "model.safetensors").is_file() and (out / "infini-llama.onnx").is_file()


@pytest.mark.parametrize("beta", [[1.0, 2.0], float("nan"), "x"])
def test_bad_beta_init(beta):
    with pytest.raises(ValueError, match=r"beta_init: expected a finite number or 4 of them \(one per head\)"):
        from_hf(_build(), segment_len=N, beta_init=beta)


def test_beta_init_per_head():
    _, params = from_hf(_build(), segment_len=N, beta_init=[-1.0, 0.0, 1.0, 2.0])
    assert params["layers.1.attn.beta"].tolist() == [-1.0, 0.0, 1.0, 2.0]

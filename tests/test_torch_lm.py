"""torch_impl.InfiniTransformerLM against reference.lm_forward (SPEC.md §9)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infini_attention import reference as R
from infini_attention.conformance import strategies as S
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.torch_impl import InfiniTransformerLM, run_chunks


@st.composite
def lm_cases(draw):
    """Test-local: an LMConfig around a drawn attention config, tokens and a split."""
    attn = draw(S.configs(max_segment_len=4))
    cfg = R.LMConfig(vocab_size=draw(st.sampled_from([2, 11])), n_layers=draw(st.integers(1, 2)),
                     d_ff=draw(st.sampled_from([3, 8])), attn=attn)
    T = draw(S.stream_lengths(attn, max_segments=3))
    seed = draw(st.integers(0, 2**31 - 1))
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (draw(st.integers(1, 2)), T))
    return cfg, R.lm_init_params(cfg, seed), tokens, draw(S.splits(T))


@given(lm_cases(), st.sampled_from(["float64", "float32"]))
@settings(max_examples=15)
def test_lm_matches_reference(case, dtype):
    cfg, params, tokens, split = case
    tdt = getattr(torch, dtype)
    params = {k: torch.as_tensor(v).to(tdt).double().numpy() for k, v in params.items()}  # dtype-rounded
    logits_ref, states_ref = R.lm_forward(cfg, params, tokens)
    lm = InfiniTransformerLM.from_numpy(cfg, params, dtype=tdt)
    with torch.no_grad():
        logits, states = run_chunks(lm, torch.as_tensor(tokens), split)
    assert_close("logits", logits.double().numpy(), logits_ref, dtype)
    for i, (s, sr) in enumerate(zip(states, states_ref)):
        assert_close(f"layers.{i}.M", s.M.double().numpy(), sr.M, dtype, STATE_TOLERANCES)
        assert int(s.segments) == sr.segments


def test_lm_param_names_are_the_reference_names():
    cfg = R.LMConfig(vocab_size=5, n_layers=2, d_ff=6,
                     attn=R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=2, segment_len=2))
    params = R.lm_init_params(cfg, 3)
    lm = InfiniTransformerLM.from_numpy(cfg, params)
    assert sorted(n for n, _ in lm.named_parameters()) == sorted(R.lm_param_shapes(cfg))
    back = lm.numpy_params()
    assert all(np.array_equal(back[k], params[k]) for k in params) and back.keys() == params.keys()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_lm_generate_greedy_matches_full_forward(dtype):
    """Greedy decoding one token per call reproduces argmax of a single full forward."""
    cfg = R.LMConfig(vocab_size=13, n_layers=2, d_ff=16,
                     attn=R.InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=4,
                                         segment_len=3, rope_theta=1e4, update="delta"))
    lm = InfiniTransformerLM.from_numpy(cfg, R.lm_init_params(cfg, 1), dtype=dtype)
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    out, states = lm.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], prompt)
    with torch.no_grad():
        logits, _ = lm(out)
    if dtype == torch.float64:  # bf16 near-ties may flip an argmax; exactness is checked in float64
        assert torch.equal(logits[:, 3:-1].argmax(-1), out[:, 4:])
    assert all(s.M.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) for s in states)
    assert int(states[0].segments) == 9 // 3

"""torch_impl input validation (SPEC.md §12): errors name the argument, the expected and the actual."""
import numpy as np
import pytest
import torch

from infini_attention import reference as R
from infini_attention.torch_impl import InfiniAttention, InfiniTransformerLM, TorchInfiniState

C = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=3, segment_len=3)


@pytest.fixture
def layer():
    return InfiniAttention.from_numpy(C, R.init_params(C))


@pytest.fixture
def state(layer):
    return layer(torch.randn(2, 4, 4, dtype=torch.float64))[1]


@pytest.mark.parametrize("x, match", [
    (torch.zeros(2, 3, dtype=torch.float64), r"x: expected shape \(B >= 1, T, d_model=4\), got \(2, 3\)"),
    (torch.zeros(2, 3, 5, dtype=torch.float64), r"x: expected shape .*got \(2, 3, 5\)"),
    (torch.zeros(0, 3, 4, dtype=torch.float64), r"x: expected shape \(B >= 1"),
    (torch.zeros(2, 3, 4, dtype=torch.float32), r"x: expected dtype torch.float64 .*got torch.float32"),
    (torch.zeros(2, 3, 4, dtype=torch.int64), r"x: expected dtype torch.float64 .*got torch.int64"),
    (np.zeros((2, 3, 4)), r"x: expected a torch.Tensor .*got ndarray"),
    (torch.tensor([[[0.0, float("nan"), 0.0, 0.0]]], dtype=torch.float64), r"x: expected finite values, got 1 NaN/Inf"),
    (torch.tensor([[[0.0, float("inf"), 0.0, 0.0]]], dtype=torch.float64), r"x: expected finite values"),
])
def test_bad_x_rejected(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer(x)


def test_state_from_another_config_rejected(state):
    other = C.replace(d_value=5)
    with pytest.raises(ValueError, match=r"state.M: expected shape \(2, 1, 2, 5\).*got \(2, 1, 2, 3\)"):
        InfiniAttention(other, dtype=torch.float64)(torch.zeros(2, 1, 4, dtype=torch.float64), state)


def test_state_with_wrong_batch_rejected(layer, state):
    with pytest.raises(ValueError, match=r"state.M: expected shape \(3, 1, 2, 3\)"):
        layer(torch.zeros(3, 1, 4, dtype=torch.float64), state)


def test_state_with_full_pending_segment_rejected(layer, state):
    bad = TorchInfiniState(state.M, state.z, torch.zeros(2, 1, 3, 2, dtype=torch.float64),
                           torch.zeros(2, 1, 3, 3, dtype=torch.float64), state.segments)
    with pytest.raises(ValueError, match=r"state.k: expected shape .* 0 <= n < segment_len=3, got \(2, 1, 3, 2\)"):
        layer(torch.zeros(2, 1, 4, dtype=torch.float64), bad)


@pytest.mark.parametrize("field", ["M", "z", "k", "v"])
def test_non_finite_state_rejected(layer, state, field):
    t = getattr(state, field).clone()
    t.view(-1)[0] = float("nan")
    bad = TorchInfiniState(**{**state.__dict__, field: t})
    with pytest.raises(ValueError, match=rf"state.{field}: expected finite values, got 1 NaN/Inf"):
        layer(torch.zeros(2, 1, 4, dtype=torch.float64), bad)


def test_state_dtype_mismatch_rejected(state):
    layer32 = InfiniAttention(C, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"state.k: expected dtype torch.bfloat16 for a torch.bfloat16 layer"):
        st = TorchInfiniState(state.M.float(), state.z.float(), state.k, state.v, state.segments)
        layer32(torch.zeros(2, 1, 4, dtype=torch.bfloat16), st)


def test_bad_segment_counter_rejected(layer, state):
    with pytest.raises(ValueError, match=r"state.segments: expected an int64 0-d tensor, got 1"):
        layer(torch.zeros(2, 1, 4, dtype=torch.float64), TorchInfiniState(**{**state.__dict__, "segments": 1}))
    with pytest.raises(ValueError, match=r"state.segments: expected an integer >= 0, got -1"):
        layer(torch.zeros(2, 1, 4, dtype=torch.float64),
              TorchInfiniState(**{**state.__dict__, "segments": torch.tensor(-1)}))


def test_wrong_state_type_rejected(layer):
    with pytest.raises(ValueError, match=r"state: expected a TorchInfiniState, an InfiniState or None, got dict"):
        layer(torch.zeros(1, 1, 4, dtype=torch.float64), {})


def test_bad_params_rejected():
    p = R.init_params(C)
    with pytest.raises(ValueError, match=r"params: expected keys .*missing \['beta'\]"):
        InfiniAttention.from_numpy(C, {k: v for k, v in p.items() if k != "beta"})
    with pytest.raises(ValueError, match=r"params\['wq'\]: expected a float array of shape \(4, 4\), got float64 \(4, 5\)"):
        InfiniAttention.from_numpy(C, dict(p, wq=np.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"params\['wo'\]: expected finite"):
        InfiniAttention.from_numpy(C, dict(p, wo=np.full((6, 4), np.nan)))


def test_bad_constructor_args_rejected():
    with pytest.raises(ValueError, match=r"config: expected an InfiniConfig, got dict"):
        InfiniAttention({"d_model": 4})
    with pytest.raises(ValueError, match=r"detach_every: expected None or an integer >= 1, got 0"):
        InfiniAttention(C, detach_every=0)
    with pytest.raises(ValueError, match=r"n_heads: expected a multiple of n_kv_heads"):
        InfiniAttention(C.replace(n_kv_heads=3))  # the reference config validates itself


def test_lm_bad_tokens_and_states_rejected():
    lm_c = R.LMConfig(vocab_size=7, n_layers=2, d_ff=8, attn=C)
    lm = InfiniTransformerLM.from_numpy(lm_c, R.lm_init_params(lm_c))
    with pytest.raises(ValueError, match=r"tokens: expected token ids in \[0, 7\) \(vocab_size\), got 7 at \(row 0, position 1\); range \[0, 7\]"):
        lm(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match=r"tokens: expected an integer tensor of shape \(B, T\), got torch.float32"):
        lm(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"states: expected None or a list of 2 states, got 1"):
        lm(torch.zeros(1, 2, dtype=torch.long), [None])
    with pytest.raises(ValueError, match=r"params: expected keys .*missing \['embed'\]"):
        lm.load_numpy_params({k: v for k, v in R.lm_init_params(lm_c).items() if k != "embed"})


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, "float32", torch.complex64])
def test_non_float_dtype_is_one_line(dtype):
    with pytest.raises(ValueError, match=r"dtype: expected None or one of torch.float64, torch.float32, "
                                         r"torch.bfloat16, torch.float16, got "):
        InfiniAttention.from_numpy(C, R.init_params(C), dtype=dtype)
    lm_c = R.LMConfig(vocab_size=7, n_layers=1, d_ff=8, attn=C)
    with pytest.raises(ValueError, match=r"dtype: expected None or one of"):
        InfiniTransformerLM(lm_c, dtype=dtype)

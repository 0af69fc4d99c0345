"""torch_impl's two forms: the plain per-segment form (naive.py) against the reference, and the fast layer
(layer.py) against the plain form, outputs, states and gradients, over drawn configs and splits."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from infini_attention import reference as R
from infini_attention.conformance import strategies as S
from infini_attention.reference.tolerances import GRAD_TOLERANCES, STATE_TOLERANCES, assert_close
from infini_attention.torch_impl import InfiniAttention, naive, piece_mode, run_chunks


def _naive_run(config, params: dict, x: np.ndarray, split, dtype=torch.float64):
    p = {k: torch.from_numpy(v).to(dtype) for k, v in params.items()}
    outs, state = R.run_split(lambda chunk, s: naive.forward(config, p, chunk, s), torch.from_numpy(x).to(dtype),
                              split)
    return torch.cat(outs, dim=1), state


@given(S.cases())
def test_naive_matches_reference(case):
    y, state = _naive_run(case.config, case.params, case.x, case.split)
    y_ref, s_ref = R.forward(case.config, case.params, case.x)
    assert_close("y", y.numpy(), y_ref, "float64")
    s = state.to_reference()
    for name in ("M", "z", "k", "v"):
        assert_close(f"state.{name}", getattr(s, name), getattr(s_ref, name), "float64", STATE_TOLERANCES)
    assert s.segments == s_ref.segments


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(case=S.cases(max_segments=5), data=st.data())
def test_fast_layer_matches_naive(dtype, case, data):
    """The fast layer (segments batched, prefix-summed memory, pending buffers) equals the plain form, any split."""
    tdt = getattr(torch, dtype)
    fast_split = data.draw(S.splits(case.x.shape[1]), label="fast_split")
    y_naive, s_naive = _naive_run(case.config, case.params, case.x, case.split, tdt)
    layer = InfiniAttention.from_numpy(case.config, case.params, dtype=tdt)
    with torch.no_grad():
        y_fast, s_fast = run_chunks(layer, torch.from_numpy(case.x).to(tdt), fast_split)
    assert_close("y fast vs naive", y_fast.double().numpy(), y_naive.double().numpy(), dtype)
    for name in ("M", "z", "k", "v"):
        assert_close(f"state.{name} fast vs naive", getattr(s_fast, name).double().numpy(),
                     getattr(s_naive, name).double().numpy(), dtype, STATE_TOLERANCES)
    assert int(s_fast.segments) == int(s_naive.segments)


@given(case=S.cases(max_segments=3), dy_seed=st.integers(0, 2**31 - 1))
def test_fast_layer_gradients_match_naive(case, dy_seed):
    """Backpropagation through the memory across segments: the same gradients by both forms (float64)."""
    c = case.config
    dy = torch.from_numpy(np.random.default_rng(dy_seed).standard_normal(case.x.shape))
    layer = InfiniAttention.from_numpy(c, case.params)
    x1 = torch.from_numpy(case.x).requires_grad_(True)
    (layer(x1)[0] * dy).sum().backward()
    p = {k: torch.from_numpy(v).requires_grad_(True) for k, v in case.params.items()}
    x2 = torch.from_numpy(case.x).requires_grad_(True)
    (naive.forward(c, p, x2)[0] * dy).sum().backward()
    assert_close("d/dx", x1.grad.numpy(), x2.grad.numpy(), "float64", GRAD_TOLERANCES)
    for name, t in p.items():
        g = getattr(layer, name).grad
        assert_close(f"d/d{name}", np.zeros(t.shape) if g is None else g.numpy(),
                     np.zeros(t.shape) if t.grad is None else t.grad.numpy(), "float64", GRAD_TOLERANCES)


@given(S.cases(max_segments=2))
def test_piece_mode_runs_the_plain_form(case):
    """In piece mode (what the exporter traces) a layer call of one piece is naive.segment_piece."""
    c = case.config
    layer = InfiniAttention.from_numpy(c, case.params)
    x = torch.from_numpy(case.x)
    state = layer.init_state(x.shape[0])
    with torch.no_grad(), piece_mode(layer):
        ys = []
        for a, b in R.pieces(0, x.shape[1], c.segment_len):
            y, state = layer(x[:, a:b], state)
            ys.append(y)
    assert not layer.piece_mode and layer.check_values  # restored on exit
    y_ref, s_ref = R.forward(c, case.params, case.x)
    assert_close("y", torch.cat(ys, 1).numpy(), y_ref, "float64")
    assert_close("M", state.M.numpy(), s_ref.M, "float64", STATE_TOLERANCES)


def test_a_swapped_equation_changes_the_result():
    """The plain form really is built from its named equations (the mutants depend on it)."""
    c = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=2, segment_len=2)
    params = {k: torch.from_numpy(v) for k, v in R.init_params(c, 1).items()}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 6, 4)))
    y, _ = naive.forward(c, params, x)
    y2, _ = naive.forward(c, params, x, eq=naive.SPEC.replace(sigma=torch.nn.functional.elu))
    assert not torch.allclose(y[:, 2:], y2[:, 2:])  # later segments read the memory through sigma
    assert torch.equal(naive.forward(c, params, x, eq=naive.SPEC.replace())[0], y)

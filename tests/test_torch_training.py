"""Gradients of torch_impl.InfiniAttention: gradcheck, BPTT through the memory, detach_every."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infini_attention import reference as R
from infini_attention.conformance import strategies as S
from infini_attention.torch_impl import InfiniAttention, run_chunks


def _tiny(update="linear", **kw):
    return R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=3, segment_len=2,
                          update=update, rope_theta=10.0, **kw)


@pytest.mark.parametrize("update,first_segment", [("linear", "gated"), ("delta", "local_only")])
def test_gradcheck_float64_through_memory_and_state(update, first_segment):
    """d y / d (x, params, incoming state): 2.5 segments in one call after a 3-token prefix
    (so the call starts mid-segment with pending keys and a non-zero memory)."""
    c = _tiny(update, first_segment=first_segment)
    layer = InfiniAttention.from_numpy(c, R.init_params(c, 1))
    torch.manual_seed(0)
    with torch.no_grad():
        _, s0 = layer(torch.randn(1, 3, 4, dtype=torch.float64))
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    M0, z0, k0, v0 = (t.clone().requires_grad_() for t in (s0.M, s0.z, s0.k, s0.v))
    names = ("wq", "wk", "wv", "wo", "beta")

    def f(x, M, z, k, v, *params):
        state = type(s0)(M, z, k, v, s0.segments)
        y, s = torch.func.functional_call(layer, dict(zip(names, params)), (x, state))
        return y, s.M, s.z, s.k

    params = [getattr(layer, n).detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, (x, M0, z0, k0, v0, *params), eps=1e-6, atol=1e-6)


def _loss_grad_wrt_first_segment(layer, x, sizes=None, loss_from=None):
    x = x.clone().requires_grad_()
    y, _ = run_chunks(layer, x, sizes or [x.shape[1]])
    y[:, loss_from:].sum().backward()
    N = layer.config.segment_len
    return x.grad[:, :N].abs().max().item()


def test_bptt_gradient_reaches_first_segment_from_later_segment():
    """The last segment's output depends on the first segment only through the memory."""
    c = _tiny()
    layer = InfiniAttention.from_numpy(c, R.init_params(c, 2))
    x = torch.randn(2, 8, 4, dtype=torch.float64)  # 4 segments of N = 2
    assert _loss_grad_wrt_first_segment(layer, x, loss_from=6) > 1e-6
    # the same across calls, when the state is passed on without detaching
    assert _loss_grad_wrt_first_segment(layer, x, sizes=[3, 1, 1, 3], loss_from=6) > 1e-6


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_detach_every_stops_gradient(update):
    c = _tiny(update)
    x = torch.randn(2, 8, 4, dtype=torch.float64)
    p = R.init_params(c, 2)
    # loss on segment 3 (reads the memory after 3 completed segments)
    assert _loss_grad_wrt_first_segment(InfiniAttention.from_numpy(c, p, detach_every=1), x, loss_from=6) == 0
    assert _loss_grad_wrt_first_segment(InfiniAttention.from_numpy(c, p, detach_every=3), x, loss_from=6) == 0
    assert _loss_grad_wrt_first_segment(InfiniAttention.from_numpy(c, p, detach_every=4), x, loss_from=6) > 1e-6
    # counted on the stream, not per call: split calls behave the same
    layer = InfiniAttention.from_numpy(c, p, detach_every=2)
    assert _loss_grad_wrt_first_segment(layer, x, sizes=[1, 4, 3], loss_from=6) == 0
    # the forward kwarg overrides the constructor
    layer = InfiniAttention.from_numpy(c, p, detach_every=1)
    xg = x.clone().requires_grad_()
    y, _ = layer(xg, detach_every=None)
    y[:, 6:].sum().backward()
    assert xg.grad[:, :2].abs().max() > 1e-6


@given(S.cases(max_segments=3), st.sampled_from([1, 2, 3]))
@settings(max_examples=10)
def test_detach_every_does_not_change_values(case, every):
    plain = InfiniAttention.from_numpy(case.config, case.params)
    cut = InfiniAttention.from_numpy(case.config, case.params, detach_every=every)
    x = torch.as_tensor(case.x)
    with torch.no_grad():
        y1, s1 = run_chunks(plain, x, case.split)
        y2, s2 = run_chunks(cut, x, case.split)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1.M, s2.M, rtol=1e-12, atol=1e-12)


def test_state_detach_cuts_graph_between_calls():
    c = _tiny()
    layer = InfiniAttention.from_numpy(c, R.init_params(c, 2))
    x = torch.randn(1, 8, 4, dtype=torch.float64, requires_grad=True)
    _, s = layer(x[:, :5])
    s = s.detach()
    assert not any(t.requires_grad for t in (s.M, s.z, s.k, s.v))
    y, _ = layer(x[:, 5:], s)
    y.sum().backward()
    assert x.grad[:, :5].abs().max() == 0


def test_training_step_reduces_loss_float32():
    """Smoke test: a few Adam steps on a next-step regression task over 4 segments."""
    c = R.InfiniConfig(d_model=8, n_heads=2, n_kv_heads=2, d_key=4, d_value=4, segment_len=4, rope_theta=1e4)
    torch.manual_seed(0)
    layer = InfiniAttention(c, dtype=torch.float32)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(4, 16, 8)
    losses = []
    for _ in range(30):
        y, _ = layer(x)
        loss = (y[:, :-1] - x[:, 1:]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert layer.beta.grad is not None and layer.beta.grad.abs().sum() > 0

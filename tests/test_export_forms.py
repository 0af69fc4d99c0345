"""The forms the ONNX export traces (torch_impl: chunk.py, decode.py, export_forms.py, attention_op.py), run eagerly against
the reference: every call of a split goes to the form the exported graph picks for it (inside / piece / chunk),
with MatMul/Softmax or Attention-op local attention; outputs and states must match for any config and split."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from infini_attention import reference as R
from infini_attention.conformance import strategies as S
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.torch_impl import TorchInfiniState, naive
from infini_attention.torch_impl.attention_op import attend_past, attention_op
from infini_attention.torch_impl.chunk import _delta_scan, chunk_forward, scan_segments
from infini_attention.torch_impl.decode import inside_piece
from infini_attention.torch_impl.export_forms import by_parts, equations


def graph_form(n: int, t: int, N: int) -> str:
    """What the exported graph runs for a call of t tokens after n pending (export/compose.py's If)."""
    return "inside" if n + t < N else "piece" if n + t == N else "chunk"


def _run(case, attention: str, forms=None):
    c = case.config
    p = {k: torch.from_numpy(v) for k, v in case.params.items()}
    used = set()

    def step(chunk, st):
        form = forms or graph_form(st.k.shape[2], chunk.shape[1], c.segment_len)
        used.add(form)
        fn = {"chunk": chunk_forward, "inside": inside_piece if attention == "op" else naive.segment_piece,
              "piece": naive.segment_piece}[form]  # what export/graph.py traces for each branch
        return fn(c, p, chunk, st, equations(form, attention))

    st0 = TorchInfiniState.zeros(c, case.x.shape[0], torch.float64)
    # zero-token calls never reach the graph (InfiniSession skips them): skip them here too
    split = [s for s in case.split if s]
    outs, st = R.run_split(step, torch.from_numpy(case.x), split, st0)
    y = torch.cat(outs, dim=1).numpy() if outs else np.zeros((case.x.shape[0], 0, c.d_model))
    return y, st.to_reference(), used


def _assert_matches_reference(case, y, s):
    y_ref, s_ref = R.forward(case.config, case.params, case.x)
    assert_close("y", y, y_ref, "float64")
    for name in ("M", "z", "k", "v"):
        assert_close(f"state.{name}", getattr(s, name), getattr(s_ref, name), "float64", STATE_TOLERANCES)
    assert s.segments == s_ref.segments


@pytest.mark.parametrize("attention", ["matmul", "op"])
@given(case=S.cases(max_segments=5))
def test_graph_forms_match_reference(attention, case):
    y, s, _ = _run(case, attention)
    _assert_matches_reference(case, y, s)


@pytest.mark.parametrize("attention", ["matmul", "op"])
@given(case=S.cases(max_segments=5))
def test_chunk_form_alone_takes_any_call(attention, case):
    """chunk_forward is valid for every call, not only those the graph sends it (a call inside a segment
    included): the graph's choice is for speed, never for correctness."""
    y, s, _ = _run(case, attention, forms="chunk")
    _assert_matches_reference(case, y, s)


def test_every_form_is_exercised():
    """The split below reaches all three forms (so the tests above cannot pass by never leaving one)."""
    c = R.InfiniConfig(d_model=8, n_heads=4, n_kv_heads=2, d_key=4, d_value=4, segment_len=4, update="delta",
                       rope_theta=10.0)
    x = np.random.default_rng(0).standard_normal((2, 19, 8))
    case = S.Case(c, R.init_params(c, 0), x, [1, 3, 2, 9, 4])
    y, s, used = _run(case, "op")
    assert used == {"inside", "piece", "chunk"}
    _assert_matches_reference(case, y, s)


@given(n=st.integers(0, 7), t=st.integers(1, 9), gqa=st.booleans(), seed=st.integers(0, 2**16))
def test_attend_past_is_bottom_right_causal(n, t, gqa, seed):
    """Query i of t, after n past keys, sees keys 0 .. n + i: naive.local_attention with naive.visible(n, t)."""
    g = torch.Generator().manual_seed(seed)
    H, Hkv = 4, (2 if gqa else 4)
    q = torch.randn(2, t, H, 5, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, n + t, Hkv, d, generator=g, dtype=torch.float64) for d in (5, 3))
    expected = naive.local_attention(q, naive.expand_kv(k, H // Hkv), naive.expand_kv(v, H // Hkv), 0.4,
                                     naive.visible(n, t, q.device))
    np.testing.assert_allclose(attention_op(q, k, v, 0.4, None).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    out = attend_past(q.transpose(1, 2), k[:, :n].transpose(1, 2), v[:, :n].transpose(1, 2),
                      k[:, n:].transpose(1, 2), v[:, n:].transpose(1, 2), 0.4)
    np.testing.assert_allclose(out.transpose(1, 2).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parts", [2, 4])
def test_by_parts_equals_whole_attention(parts):
    g = torch.Generator().manual_seed(1)
    N = 8
    q, k, v = (torch.randn(3, N, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = naive.visible(0, N, q.device)
    whole = naive.local_attention(q, k, v, 0.5, mask)
    np.testing.assert_allclose(by_parts(naive.local_attention, parts)(q, k, v, 0.5, mask).numpy(), whole.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_scripted_delta_scan_equals_scan_op():
    """The TorchScript exporter's loop (_delta_scan) and torch's scan op compute the same memories."""
    g = torch.Generator().manual_seed(2)
    S_, B, Hkv, N, dk, dv = 3, 2, 2, 4, 3, 5
    sk = torch.rand(S_, B, Hkv, N, dk, generator=g, dtype=torch.float64) + 0.1
    vt = torch.randn(S_, B, Hkv, N, dv, generator=g, dtype=torch.float64)
    m0, z0 = torch.randn(B, Hkv, dk, dv, generator=g, dtype=torch.float64), torch.rand(B, Hkv, dk, generator=g) + 1
    done = torch.tensor([True, True, False])
    a = scan_segments(m0, z0.double(), sk, vt, done, 1e-6)
    b = _delta_scan(m0, z0.double(), sk, vt, done, 1e-6)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a[2].numpy(), a[0][2].numpy())  # the last segment is not done: nothing written
    assert not torch.equal(a[0][1], a[0][0]) and not torch.equal(a[0][2], a[0][1])  # the done ones wrote

"""torch_impl.InfiniAttention against the reference and the rules of SPEC.md (edge cases by name)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from infini_attention import reference as R
from infini_attention.conformance import strategies as S
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.torch_impl import InfiniAttention, TorchInfiniState, run_chunks

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values a `dtype` tensor actually holds (SPEC.md §11: same rounded inputs)."""
    return torch.as_tensor(a).to(DTYPES.get(dtype) or getattr(torch, dtype)).double().numpy()


def _compare_with_reference(case, dtype: str):
    tdt = getattr(torch, dtype)
    params = {k: _rounded(v, dtype) for k, v in case.params.items()}
    x = _rounded(case.x, dtype)
    y_ref, s_ref = R.forward(case.config, params, x)
    layer = InfiniAttention.from_numpy(case.config, params, dtype=tdt)
    with torch.no_grad():
        y, state = run_chunks(layer, torch.as_tensor(x).to(tdt), case.split)
    assert_close("y", y.double().numpy(), y_ref, dtype)
    s = state.to_reference()
    for name in ("M", "z", "k", "v"):
        assert_close(f"state.{name}", getattr(s, name), getattr(s_ref, name), dtype, STATE_TOLERANCES)
    assert s.segments == s_ref.segments


@given(S.cases())
def test_matches_reference_float64(case):
    _compare_with_reference(case, "float64")


@given(S.cases())
def test_matches_reference_float32(case):
    _compare_with_reference(case, "float32")


@given(S.cases(max_segments=3), st.sampled_from(["float32", "float64"]))
def test_split_invariance_token_by_token(case, dtype):
    """SPEC.md §4.3: one call, token by token and the drawn split agree (torch against torch)."""
    tdt = DTYPES[dtype]
    layer = InfiniAttention.from_numpy(case.config, case.params, dtype=tdt)
    x = torch.as_tensor(case.x).to(tdt)
    T = x.shape[1]
    with torch.no_grad():
        y1, s1 = layer(x)
        for sizes in ([1] * T, case.split):
            y2, s2 = run_chunks(layer, x, sizes)
            assert_close("y", y2.double().numpy(), y1.double().numpy(), dtype)
            for name in ("M", "z", "k", "v"):
                assert_close(f"state.{name}", getattr(s2, name).double().numpy(),
                             getattr(s1, name).double().numpy(), dtype, STATE_TOLERANCES)
            assert int(s2.segments) == int(s1.segments) == T // case.config.segment_len


@given(S.cases(max_segments=3), st.data())
def test_causality_future_token_changes_no_earlier_output(case, data):
    layer = InfiniAttention.from_numpy(case.config, case.params)
    x = torch.as_tensor(case.x)
    t = data.draw(st.integers(0, x.shape[1] - 1), label="perturbed token")
    x2 = x.clone()
    x2[:, t] += 10.0
    with torch.no_grad():
        y1, _ = run_chunks(layer, x, case.split)
        y2, _ = run_chunks(layer, x2, case.split)
    assert torch.equal(y1[:, :t], y2[:, :t])
    if t < x.shape[1]:
        assert not torch.equal(y1[:, t:], y2[:, t:])


@given(S.cases(max_segments=3))
def test_batch_elements_are_independent(case):
    layer = InfiniAttention.from_numpy(case.config, case.params)
    x = torch.as_tensor(case.x)
    with torch.no_grad():
        y, s = run_chunks(layer, x, case.split)
        for b in range(x.shape[0]):
            yb, sb = run_chunks(layer, x[b:b + 1], case.split)
            assert_close(f"y[{b}]", yb.numpy(), y[b:b + 1].numpy())
            assert_close(f"M[{b}]", sb.M.numpy(), s.M[b:b + 1].numpy())


def _per_segment_sdpa(config, params, x):
    """Plain causal attention inside each segment, written directly with SDPA (no memory)."""
    c, (B, T, _) = config, x.shape
    q = (x @ params["wq"]).view(B, T, c.n_heads, c.d_key)  # (B, T, H, dk)
    k = (x @ params["wk"]).view(B, T, c.n_kv_heads, c.d_key)  # (B, T, Hkv, dk)
    v = (x @ params["wv"]).view(B, T, c.n_kv_heads, c.d_value)  # (B, T, Hkv, dv)
    outs = []
    for s0 in range(0, T, c.segment_len):
        sl = slice(s0, min(T, s0 + c.segment_len))
        qs, ks = q[:, sl], k[:, sl]
        if c.rope_theta is not None:
            pos = torch.arange(qs.shape[1], dtype=torch.float64)
            inv = c.rope_theta ** (-torch.arange(0, c.d_key, 2, dtype=torch.float64) / c.d_key)
            ang = pos[:, None] * inv[None]  # (L, dk/2)
            cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # (L, 1, dk/2)

            def rot(t):
                if c.rope_style == "half":
                    a, b = t.chunk(2, dim=-1)
                    return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)
                a, b = t[..., 0::2], t[..., 1::2]
                return torch.stack((a * cos - b * sin, b * cos + a * sin), -1).flatten(-2)

            qs, ks = rot(qs), rot(ks)
        G = c.group_size
        o = F.scaled_dot_product_attention(
            qs.transpose(1, 2), ks.transpose(1, 2).repeat_interleave(G, 1),
            v[:, sl].transpose(1, 2).repeat_interleave(G, 1), is_causal=True, scale=c.attn_scale)
        outs.append(o.transpose(1, 2))  # (B, L, H, dv)
    return torch.cat(outs, 1).reshape(B, T, -1) @ params["wo"]


@given(S.cases(max_segments=3, gate_on="memory"))
def test_gate_limit_local_is_per_segment_causal_attention(case):
    """SPEC.md §10: beta -> -inf with gate_on=memory gives plain causal attention per segment."""
    params = dict(case.params, beta=np.full(case.config.n_heads, -40.0))
    layer = InfiniAttention.from_numpy(case.config, params)
    tp = {k: torch.as_tensor(v) for k, v in params.items()}
    x = torch.as_tensor(case.x)
    with torch.no_grad():
        y, _ = run_chunks(layer, x, case.split)
    assert_close("y", y.numpy(), _per_segment_sdpa(case.config, tp, x).numpy())


def _first_segment_case(config, params, x, expected_scale):
    layer = InfiniAttention.from_numpy(config, params)
    tp = {k: torch.as_tensor(v) for k, v in params.items()}
    x = torch.as_tensor(x)[:, :config.segment_len]
    with torch.no_grad():
        y, state = layer(x)
        B, T, _ = x.shape
        local = _per_segment_sdpa(config, dict(tp, wo=torch.eye(config.n_heads * config.d_value,
                                                               dtype=torch.float64)), x)
        local = local.view(B, T, config.n_heads, config.d_value)  # (B, T, H, dv) = A_dot
        expected = (local * expected_scale(tp["beta"])[:, None]).reshape(B, T, -1) @ tp["wo"]
    assert_close("y", y.numpy(), expected.numpy())
    assert not state.M.any() and not state.z.any() or x.shape[1] == config.segment_len


@given(S.cases(max_segments=1, gate_on="memory", first_segment="gated"))
def test_first_segment_gated_scales_local_attention(case):
    """SPEC.md §8.2: the first segment reads exactly 0 from memory, A = (1 - s) A_dot."""
    _first_segment_case(case.config, case.params, case.x, lambda beta: 1 - torch.sigmoid(beta))


@given(S.cases(max_segments=1, first_segment="local_only"))
def test_first_segment_local_only_is_local_attention(case):
    _first_segment_case(case.config, case.params, case.x, lambda beta: torch.ones_like(beta))


@given(S.configs(max_segment_len=8), st.integers(0, 2**31 - 1))
def test_partial_segment_not_written(config, seed):
    """SPEC.md §10: a final partial segment leaves M, z untouched; its pre-RoPE k/v stay pending."""
    N = config.segment_len
    rng = np.random.default_rng(seed)
    params = R.init_params(config, seed)
    x = torch.as_tensor(rng.standard_normal((2, 2 * N + N // 2, config.d_model)))  # r = N // 2 < N
    layer = InfiniAttention.from_numpy(config, params)
    with torch.no_grad():
        _, full = layer(x[:, :2 * N])
        _, part = layer(x[:, 2 * N:], full)
    r = x.shape[1] - 2 * N
    assert part.pending == r and int(part.segments) == 2
    assert torch.equal(part.M, full.M) and torch.equal(part.z, full.z)
    k = (x[:, 2 * N:] @ layer.wk).view(2, r, config.n_kv_heads, config.d_key).transpose(1, 2)
    assert_close("pending k (pre-RoPE)", part.k.detach().numpy(), k.detach().numpy())


def test_segment_len_one_local_attention_is_value():
    """SPEC.md §10, N = 1: every token attends only to itself, so A_dot = v."""
    c = R.InfiniConfig(d_model=6, n_heads=2, n_kv_heads=1, d_key=4, d_value=3, segment_len=1,
                       rope_theta=10.0, first_segment="local_only")
    p = R.init_params(c, 3)
    layer = InfiniAttention.from_numpy(c, p)
    x = torch.randn(2, 1, 6, dtype=torch.float64)
    y, s = layer(x)
    v = (x @ layer.wv).repeat(1, 1, 2)  # both query heads read kv head 0: (B, 1, H*dv)
    assert_close("y", y.detach().numpy(), (v @ layer.wo).detach().numpy())
    assert int(s.segments) == 1 and s.pending == 0


def test_empty_call_returns_empty_output_and_same_state():
    c = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=2, d_key=2, d_value=2, segment_len=3)
    layer = InfiniAttention.from_numpy(c, R.init_params(c))
    _, s = layer(torch.randn(1, 4, 4, dtype=torch.float64))
    y, s2 = layer(torch.zeros(1, 0, 4, dtype=torch.float64), s)
    assert y.shape == (1, 0, 4)
    for name in ("M", "z", "k", "v", "segments"):
        assert torch.equal(getattr(s2, name), getattr(s, name))


def test_input_state_is_not_modified():
    c = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=2, segment_len=3, update="delta")
    layer = InfiniAttention.from_numpy(c, R.init_params(c))
    _, s = layer(torch.randn(1, 4, 4, dtype=torch.float64))
    before = [t.clone() for t in (s.M, s.z, s.k, s.v, s.segments)]
    layer(torch.randn(1, 7, 4, dtype=torch.float64), s)
    assert all(torch.equal(a, b) for a, b in zip(before, (s.M, s.z, s.k, s.v, s.segments)))


def test_delta_writes_nothing_when_retrievable():
    """SPEC.md §7.2: after writing (k, v) alone (N = 1), the memory returns v exactly for k;
    writing the same token again adds nothing to M (z still grows by sigma(k))."""
    c = R.InfiniConfig(d_model=5, n_heads=2, n_kv_heads=2, d_key=3, d_value=4, segment_len=1, update="delta")
    layer = InfiniAttention.from_numpy(c, R.init_params(c, 7))
    tok = torch.randn(2, 1, 5, dtype=torch.float64)
    with torch.no_grad():
        _, s1 = layer(tok)
        _, s2 = layer(tok, s1)
    assert_close("M", s2.M.numpy(), s1.M.numpy())
    assert_close("z", s2.z.numpy(), 2 * s1.z.numpy())


@given(S.cases(max_segments=2, update="delta"))
def test_delta_first_segment_equals_linear(case):
    c = case.config
    lin = InfiniAttention.from_numpy(c.replace(update="linear"), case.params)
    dlt = InfiniAttention.from_numpy(c, case.params)
    x = torch.as_tensor(case.x)[:, :c.segment_len]
    with torch.no_grad():
        (y1, s1), (y2, s2) = lin(x), dlt(x)
    assert_close("y", y2.numpy(), y1.numpy())
    assert_close("M", s2.M.numpy(), s1.M.numpy())


@given(S.configs(), st.integers(0, 1000))
def test_numpy_params_round_trip_exactly(config, seed):
    params = R.init_params(config, seed)
    layer = InfiniAttention.from_numpy(config, params)
    back = layer.numpy_params()
    assert set(back) == set(params)
    assert all(np.array_equal(back[k], params[k]) for k in params)
    assert dict(layer.named_parameters()).keys() == set(params)


def test_state_round_trips_through_reference():
    c = R.InfiniConfig(d_model=4, n_heads=4, n_kv_heads=2, d_key=2, d_value=3, segment_len=3)
    layer = InfiniAttention.from_numpy(c, R.init_params(c))
    _, s = layer(torch.randn(2, 5, 4, dtype=torch.float64))
    ref = s.to_reference()
    assert isinstance(ref, R.InfiniState) and ref.segments == 1 and ref.pending == 2
    back = TorchInfiniState.from_reference(ref, dtype=torch.float64)
    assert all(torch.equal(getattr(back, n), getattr(s, n)) for n in ("M", "z", "k", "v", "segments"))
    # a reference state is also accepted directly by forward
    y1, _ = layer(torch.ones(2, 2, 4, dtype=torch.float64), ref)
    y2, _ = layer(torch.ones(2, 2, 4, dtype=torch.float64), s)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_float32_state(dtype):
    """SPEC.md §11: z grows with the stream and would overflow float16; the state stays float32."""
    c = R.InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=4, segment_len=16, rope_theta=1e4)
    p = R.init_params(c, 1)
    p["wk"] = p["wk"] * 100  # sigma(k) ~ 40 per token on average: z passes 65504 within 2048 tokens
    p["beta"] = np.array([1.0, -1.0])
    name = str(dtype).replace("torch.", "")
    p = {k: _rounded(v, name) for k, v in p.items()}
    x = _rounded(np.random.default_rng(0).standard_normal((1, 2048, 8)), name)
    layer = InfiniAttention.from_numpy(c, p, dtype=dtype)
    with torch.no_grad():
        y, s = layer(torch.as_tensor(x).to(dtype))
    assert s.M.dtype == s.z.dtype == torch.float32 and s.k.dtype == dtype
    assert torch.isfinite(y).all() and float(s.z.max()) > 65504
    y_ref, s_ref = R.forward(c, p, x)
    assert_close("y", y.double().numpy(), y_ref, name)
    assert_close("state.z", s.z.double().numpy(), s_ref.z, name, STATE_TOLERANCES)
    assert_close("state.M", s.M.double().numpy(), s_ref.M, name, STATE_TOLERANCES)


def test_large_stream_one_call_matches_token_by_token_decode():
    """Prefill + decode: a 3.5-segment prompt, then 2*N tokens one by one."""
    c = R.InfiniConfig(d_model=16, n_heads=4, n_kv_heads=2, d_key=8, d_value=8, segment_len=8,
                       rope_theta=1e4, update="delta")
    layer = InfiniAttention.from_numpy(c, R.init_params(c, 5), dtype=torch.float32)
    x = torch.randn(2, 44, 16)
    with torch.no_grad():
        y, s = layer(x)
        y2, s2 = run_chunks(layer, x, [28] + [1] * 16)
    assert_close("y", y2.double().numpy(), y.double().numpy(), "float32")
    assert_close("M", s2.M.double().numpy(), s.M.double().numpy(), "float32", STATE_TOLERANCES)
    assert math.isclose(float(s.z.sum()), float(s2.z.sum()), rel_tol=1e-5)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_realistic_size_matches_reference_float32(update):
    """Sizes where SDPA's fused CPU kernel uses its large-block path (N > 192, several
    segments in one call, GQA, RoPE), prefill then decode, against the reference."""
    c = R.InfiniConfig(d_model=48, n_heads=4, n_kv_heads=2, d_key=16, d_value=12, segment_len=200,
                       update=update, rope_theta=1e4, rope_style="interleaved")
    p = {k: _rounded(v, "float32") for k, v in R.init_params(c, 11).items()}
    p["beta"] = _rounded(np.array([-2.0, -0.5, 0.5, 2.0]), "float32")
    x = _rounded(np.random.default_rng(2).standard_normal((2, 650, 48)), "float32")
    y_ref, s_ref = R.forward(c, p, x)
    layer = InfiniAttention.from_numpy(c, p, dtype=torch.float32)
    with torch.no_grad():
        y, s = run_chunks(layer, torch.as_tensor(x).float(), [250, 1, 3, 396])
    assert_close("y", y.double().numpy(), y_ref, "float32")
    assert_close("state.M", s.M.double().numpy(), s_ref.M, "float32", STATE_TOLERANCES)
    assert_close("state.k", s.k.double().numpy(), s_ref.k, "float32", STATE_TOLERANCES)


def test_check_values_off_skips_value_checks_only():
    c = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=2, d_key=2, d_value=2, segment_len=3)
    layer = InfiniAttention.from_numpy(c, R.init_params(c), check_values=False)
    y, _ = layer(torch.full((1, 2, 4), float("nan"), dtype=torch.float64))
    assert torch.isnan(y).all()
    with pytest.raises(ValueError, match="x: expected shape"):
        layer(torch.zeros(1, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_decode_branching_from_one_state_is_safe(mode):
    """Decoding appends pending keys in place (pending.py); continuing twice from the same
    state must not let the second branch overwrite what the first branch's state sees."""
    c = R.InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=4, segment_len=8, rope_theta=1e4)
    layer = InfiniAttention.from_numpy(c, R.init_params(c, 4))
    x = torch.randn(1, 13, 8, dtype=torch.float64)
    a, b = x[:, 10:11], x[:, 11:12]
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with ctx:
        _, s = layer(x[:, :10])  # 1 segment + 2 pending
        ya, sa = layer(a, s)
        ka = sa.k.clone()
        yb, sb = layer(b, s)  # branch from s again
        assert torch.equal(sa.k, ka) and s.pending == 2 and sa.pending == sb.pending == 3
        yc, sc = layer(x[:, 12:13], sa)  # continue branch a
    y_ref, s_ref = layer(torch.cat((x[:, :10], a, x[:, 12:13]), 1))
    assert_close("y", torch.cat((ya, yc), 1).numpy(), y_ref[:, 10:].detach().numpy())
    assert_close("k", sc.k.numpy(), s_ref.k.detach().numpy())
    y_b_ref, _ = layer(torch.cat((x[:, :10], b), 1))
    assert_close("y branch b", yb.numpy(), y_b_ref[:, 10:].detach().numpy())
    # a state built in inference mode can still be continued outside it
    with torch.no_grad():
        y2, _ = layer(x[:, 12:13], sa)
    assert_close("y after mode switch", y2.numpy(), yc.numpy())


@pytest.mark.parametrize("N", [1, 2, 3, 5, 8])
def test_timeline_pieces_tile_the_new_tokens(N):
    """Every (pending n, new T) pair: the pieces cover the new tokens [n, n+T) in order, the head
    piece ends at the first segment boundary, and every block is one whole segment or the tail."""
    from infini_attention.torch_impl.layer import timeline_pieces

    for n in range(N):
        for T in range(1, 3 * N + 2):
            L = n + T
            pieces = timeline_pieces(n, L, N)
            assert [p[0] for p in pieces] == [n] + [p[1] for p in pieces[:-1]] and pieces[-1][1] == L
            for i, (t0, t1, blocks) in enumerate(pieces):
                assert t1 > t0 and (t1 - t0) % blocks == 0
                if n > 0 and i == 0:
                    assert (t1, blocks) == (min(N, L), 1)  # head: the pending tokens' segment
                elif blocks > 1 or t1 - t0 == N:
                    assert t0 % N == 0 and (t1 - t0) == blocks * N  # middle: whole segments
                else:
                    assert t0 % N == 0 and t1 == L and t1 - t0 < N  # tail: the unfinished segment

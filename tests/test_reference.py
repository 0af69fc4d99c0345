"""The reference against the rules of SPEC.md, edge cases by name (SPEC.md §10)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infini_attention import reference as R
from infini_attention.conformance import strategies as S
from infini_attention.reference.tolerances import assert_close
from infini_attention.reference import equations as eq


def _run_split(config, params, x, split):
    ys, state = R.run_split(lambda chunk, s: R.forward(config, params, chunk, s), x, split)
    return np.concatenate(ys, axis=1), state


def _oracle(c, p, x):
    """An independent token-by-token, head-by-head loop over the equations as SPEC.md prints them."""
    B, T, _ = x.shape
    G, N = c.group_size, c.segment_len
    sig = lambda a: np.where(a > 0, a + 1, np.exp(np.minimum(a, 0)))
    y = np.zeros((B, T, c.d_model))
    for b in range(B):
        M = np.zeros((c.n_kv_heads, c.d_key, c.d_value))
        z = np.zeros((c.n_kv_heads, c.d_key))
        for t in range(T):
            s0 = t - t % N
            heads = []
            for h in range(c.n_heads):
                g = h // G
                q = x[b, t] @ p["wq"][:, h * c.d_key:(h + 1) * c.d_key]
                ks = x[b, s0:t + 1] @ p["wk"][:, g * c.d_key:(g + 1) * c.d_key]
                vs = x[b, s0:t + 1] @ p["wv"][:, g * c.d_value:(g + 1) * c.d_value]
                qr, kr = q, ks
                if c.rope_theta is not None:
                    qr = eq.rope(q[None, None, None], np.array([t - s0]), c.rope_theta, c.rope_style)[0, 0, 0]
                    kr = eq.rope(ks[None, :, None], np.arange(t - s0 + 1), c.rope_theta, c.rope_style)[0, :, 0]
                w = np.exp(c.attn_scale * kr @ qr - np.max(c.attn_scale * kr @ qr))
                a_dot = (w / w.sum()) @ vs
                a_mem = sig(q) @ M[g] / max(sig(q) @ z[g], c.eps)
                s = 1 / (1 + np.exp(-p["beta"][h]))
                if c.first_segment == "local_only" and s0 == 0:
                    heads.append(a_dot)
                elif c.gate_on == "memory":
                    heads.append(s * a_mem + (1 - s) * a_dot)
                else:
                    heads.append(s * a_dot + (1 - s) * a_mem)
            y[b, t] = np.concatenate(heads) @ p["wo"]
            if t % N == N - 1:
                for g in range(c.n_kv_heads):
                    K = sig(x[b, s0:t + 1] @ p["wk"][:, g * c.d_key:(g + 1) * c.d_key])
                    V = x[b, s0:t + 1] @ p["wv"][:, g * c.d_value:(g + 1) * c.d_value]
                    if c.update == "delta":
                        V = V - (K @ M[g]) / np.maximum(K @ z[g], c.eps)[:, None]
                    M[g] = M[g] + K.T @ V
                    z[g] = z[g] + K.sum(0)
    return y


@given(S.cases(max_segments=3))
def test_reference_matches_token_by_token_oracle(case):
    y, _ = R.forward(case.config, case.params, case.x)
    assert_close("y", y, _oracle(case.config, case.params, case.x))


@given(S.cases())
def test_split_invariance(case):
    """SPEC.md §4.3: outputs and state do not depend on the split into calls."""
    y_whole, s_whole = R.forward(case.config, case.params, case.x)
    y_split, s_split = _run_split(case.config, case.params, case.x, case.split)
    assert_close("y", y_split, y_whole)
    for name in ("M", "z", "k", "v"):
        assert_close(f"state.{name}", getattr(s_split, name), getattr(s_whole, name))
    assert s_split.segments == s_whole.segments == case.x.shape[1] // case.config.segment_len


@pytest.mark.parametrize("gate_on", ["memory", "local"])
def test_first_segment_gated_is_scaled_local_attention(gate_on):
    c = R.InfiniConfig(d_model=8, n_heads=4, n_kv_heads=2, d_key=4, d_value=3, segment_len=5, gate_on=gate_on)
    p = R.init_params(c, 3)
    p["beta"] = np.array([-2.0, -0.5, 0.7, 3.0])
    p_local = dict(p, beta=np.full(4, -60.0 if gate_on == "memory" else 60.0))  # gate fully on A_dot
    x = np.random.default_rng(0).standard_normal((2, 5, 8))
    s = 1 / (1 + np.exp(-p["beta"]))
    local_weight = 1 - s if gate_on == "memory" else s
    y, _ = R.forward(c, p, x)
    # y is linear in the heads' outputs, so scale each head's A_dot through wo.
    a_dot = _head_outputs(c, p_local, x)
    expected = eq.output_projection(a_dot * local_weight[None, None, :, None], p["wo"])
    assert_close("y", y, expected)


def test_first_segment_local_only_is_plain_local_attention():
    c = R.InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=3, segment_len=4,
                       first_segment="local_only")
    p = R.init_params(c, 1)
    p["beta"] = np.array([1.5, -1.0])
    x = np.random.default_rng(1).standard_normal((1, 6, 8))
    y, _ = R.forward(c, p, x)
    expected = eq.output_projection(_head_outputs(c, p, x[:, :4]), p["wo"])
    assert_close("y[first segment]", y[:, :4], expected)
    gated, _ = R.forward(c.replace(first_segment="gated"), p, x)
    assert_close("y[second segment]", y[:, 4:], gated[:, 4:])  # identical once memory exists


def _head_outputs(c, p, x):
    """A_dot of a single segment via the equations, (B, T, H, dv)."""
    q = eq.project(x, p["wq"], c.n_heads, c.d_key)
    k = eq.expand_kv(eq.project(x, p["wk"], c.n_kv_heads, c.d_key), c.group_size)
    v = eq.expand_kv(eq.project(x, p["wv"], c.n_kv_heads, c.d_value), c.group_size)
    return eq.local_attention(q, k, v, c.attn_scale)


def test_delta_first_segment_equals_linear():
    c = R.InfiniConfig(d_model=6, n_heads=2, n_kv_heads=2, d_key=3, d_value=4, segment_len=3)
    p, x = R.init_params(c, 2), np.random.default_rng(2).standard_normal((2, 3, 6))
    _, lin = R.forward(c, p, x)
    _, dlt = R.forward(c.replace(update="delta"), p, x)
    assert_close("M", dlt.M, lin.M)
    assert_close("z", dlt.z, lin.z)


def test_partial_segment_not_written():
    c = R.InfiniConfig(d_model=6, n_heads=2, n_kv_heads=1, d_key=3, d_value=4, segment_len=4)
    p, x = R.init_params(c, 4), np.random.default_rng(4).standard_normal((1, 7, 6))
    _, state = R.forward(c, p, x)
    _, first = R.forward(c, p, x[:, :4])
    assert state.segments == 1 and state.pending == 3
    assert_close("M", state.M, first.M)
    assert_close("state.k", state.k, eq.project(x[:, 4:], p["wk"], 1, 3).transpose(0, 2, 1, 3))


def test_segment_len_one():
    """N = 1: local attention sees only the token itself, so A_dot = v."""
    c = R.InfiniConfig(d_model=5, n_heads=2, n_kv_heads=2, d_key=2, d_value=3, segment_len=1,
                       first_segment="local_only")
    p, x = R.init_params(c, 5), np.random.default_rng(5).standard_normal((1, 1, 5))
    y, state = R.forward(c, p, x)
    v = eq.project(x, p["wv"], 2, 3)
    assert_close("y", y, eq.output_projection(v, p["wo"]))
    assert state.segments == 1 and state.pending == 0


def test_empty_call():
    c = R.InfiniConfig(d_model=4, n_heads=1, n_kv_heads=1, d_key=2, d_value=2, segment_len=3)
    p = R.init_params(c)
    _, state = R.forward(c, p, np.ones((2, 4, 4)))
    y, same = R.forward(c, p, np.ones((2, 0, 4)), state)
    assert y.shape == (2, 0, 4)
    for name in ("M", "z", "k", "v"):
        np.testing.assert_array_equal(getattr(same, name), getattr(state, name))


def test_no_fully_masked_row():
    """SPEC.md §5.2: even with huge negative scores the diagonal keeps every row finite."""
    q = np.full((1, 3, 1, 2), -1e3)
    k = np.full((1, 3, 1, 2), 1e3)
    out = eq.local_attention(q, k, np.ones((1, 3, 1, 2)), 1.0)
    assert np.all(np.isfinite(out))


def test_delta_writes_nothing_when_retrievable():
    """SPEC.md §7.2: a pair the memory already returns exactly adds nothing to M."""
    rng = np.random.default_rng(6)
    M, z = rng.uniform(0.1, 1, (1, 1, 3, 2)), rng.uniform(0.5, 1, (1, 1, 3))
    k = rng.standard_normal((1, 4, 1, 3))
    v = eq.memory_read(k, M, z, 1e-6, group_size=1)  # exactly what the memory returns
    M2, z2 = eq.memory_update_delta(k, v, M, z, 1e-6)
    assert_close("M", M2, M)
    assert_close("z", z2, z + eq.sigma(k).sum(axis=1))


def test_gate_limit_local():
    """beta -> -inf with gate_on=memory: plain causal attention per segment."""
    c = R.InfiniConfig(d_model=6, n_heads=3, n_kv_heads=1, d_key=4, d_value=2, segment_len=3, rope_theta=100.0)
    p = R.init_params(c, 7)
    p["beta"] = np.full(3, -80.0)
    x = np.random.default_rng(7).standard_normal((2, 8, 6))
    y, _ = R.forward(c, p, x)
    for s0 in range(0, 8, 3):
        seg = x[:, s0:s0 + 3]
        fresh, _ = R.forward(c, dict(p), seg)  # a segment on its own: no memory at all
        assert_close(f"y[{s0}:]", y[:, s0:s0 + 3], fresh)


def test_gqa_query_heads_of_a_group_share_memory():
    """SPEC.md §3.2: head h reads kv head h // G; permuting within groups only permutes outputs."""
    c = R.InfiniConfig(d_model=6, n_heads=4, n_kv_heads=2, d_key=3, d_value=2, segment_len=2)
    p = R.init_params(c, 8)
    x = np.random.default_rng(8).standard_normal((1, 6, 6))
    _, state = R.forward(c, p, x)
    assert state.M.shape == (1, 2, 3, 2)
    mha = c.replace(n_kv_heads=4)  # the same model with each kv head duplicated for its group
    p_mha = dict(p, wk=np.repeat(p["wk"].reshape(6, 2, 3), 2, axis=1).reshape(6, 12),
                 wv=np.repeat(p["wv"].reshape(6, 2, 2), 2, axis=1).reshape(6, 8))
    assert_close("y", R.forward(mha, p_mha, x)[0], R.forward(c, p, x)[0])


@pytest.mark.parametrize("bad, match", [
    (dict(n_heads=3, n_kv_heads=2), "n_heads"),
    (dict(d_key=3, rope_theta=10000.0), "d_key"),
    (dict(segment_len=0), "segment_len"),
    (dict(update="hebbian"), "update"),
    (dict(eps=0.0), "eps"),
])
def test_config_errors_name_the_field(bad, match):
    base = dict(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=2, segment_len=2)
    with pytest.raises(ValueError, match=match):
        R.InfiniConfig(**{**base, **bad})


def test_input_errors_name_the_argument():
    c = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=2, segment_len=2)
    p = R.init_params(c)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, d_model=4\), got \(1, 3, 5\)"):
        R.forward(c, p, np.zeros((1, 3, 5)))
    with pytest.raises(ValueError, match="x: expected a floating-point array"):
        R.forward(c, p, np.zeros((1, 3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="x: expected finite"):
        R.forward(c, p, np.full((1, 3, 4), np.nan))
    with pytest.raises(ValueError, match=r"params\['wq'\]: expected a float array of shape \(4, 4\)"):
        R.forward(c, dict(p, wq=np.zeros((4, 3))), np.zeros((1, 3, 4)))
    _, state = R.forward(c, p, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"state.M: expected a float array of shape \(1, 1, 2, 2\)"):
        R.forward(c, p, np.zeros((1, 1, 4)), state)  # a state of batch 2 fed to batch 1
    other = R.forward(c.replace(d_value=3), R.init_params(c.replace(d_value=3)), np.zeros((2, 1, 4)))[1]
    with pytest.raises(ValueError, match="state"):
        R.forward(c, p, np.zeros((2, 1, 4)), other)  # a state from another config
    state.z[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="state.z: expected finite"):
        R.forward(c, p, np.zeros((2, 1, 4)), state)


def test_lm_split_invariance_and_errors():
    c = R.InfiniConfig(d_model=8, n_heads=2, n_kv_heads=1, d_key=4, d_value=4, segment_len=3, update="delta")
    lc = R.LMConfig(vocab_size=11, n_layers=2, d_ff=12, attn=c)
    p = R.lm_init_params(lc, 1)
    tokens = np.random.default_rng(9).integers(0, 11, (2, 8))
    logits, states = R.lm_forward(lc, p, tokens)
    first, st = R.lm_forward(lc, p, tokens[:, :4])
    rest, st = R.lm_forward(lc, p, tokens[:, 4:], st)
    assert_close("logits", np.concatenate([first, rest], axis=1), logits)
    assert [s.segments for s in st] == [2, 2]
    with pytest.raises(ValueError, match=r"tokens: expected token ids in \[0, 11\)"):
        R.lm_forward(lc, p, np.array([[3, 11]]))


@given(n=st.integers(0, 7), T=st.integers(0, 40), N=st.integers(1, 8))
def test_pieces_cut_at_segment_boundaries(n, T, N):
    """SPEC.md §4.3: pieces cover the call in order, each within one segment, cut exactly at boundaries."""
    if n >= N:
        with pytest.raises(ValueError, match=r"pending: expected 0 <= n < segment_len"):
            R.pieces(n, T, N)
        return
    cuts = R.pieces(n, T, N)
    assert cuts == [] if T == 0 else ([a for a, _ in cuts] == [0] + [b for _, b in cuts[:-1]] and cuts[-1][1] == T)
    pos = n
    for a, b in cuts:
        assert 0 < b - a <= N - pos % N  # stays inside the segment it starts in
        pos += b - a
        assert b == T or pos % N == 0  # every piece but the last ends on a boundary


def test_run_split_rejects_bad_splits():
    x = np.zeros((1, 5, 2))
    with pytest.raises(ValueError, match=r"split: expected non-negative chunk sizes summing to T=5, got \[2, 2\]"):
        R.run_split(lambda c, s: (c, s), x, [2, 2])
    with pytest.raises(ValueError, match=r"split: expected .* got \[6, -1\]"):
        R.run_split(lambda c, s: (c, s), x, [6, -1])

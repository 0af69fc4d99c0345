"""torch_impl.ragged (SPEC.md §4.4): every batch row is its own stream; each row's outputs and state equal that
stream run alone by the plain form (naive.forward), whatever the other rows do, streams joining and leaving."""
import numpy as np
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from infini_attention.conformance import strategies as S
from infini_attention.reference.tolerances import STATE_TOLERANCES, assert_close
from infini_attention.torch_impl import InfiniAttention, naive
from infini_attention.torch_impl.ragged import RaggedState, ragged_step, row_lengths


def _alone(config, params, x):
    """The stream run alone, in one call, by the plain form (float64)."""
    p = {k: torch.from_numpy(v) for k, v in params.items()}
    return naive.forward(config, p, torch.from_numpy(x))


def _check_row(name, y, st, y_ref, st_ref):
    assert_close(f"{name} y", y, y_ref.numpy(), "float64")
    for field in ("M", "z", "k", "v"):
        assert_close(f"{name} state.{field}", getattr(st, field).numpy(), getattr(st_ref, field).numpy(), "float64",
                     STATE_TOLERANCES)
    assert int(st.segments) == int(st_ref.segments)


def _call(layer, rows, states, pieces):
    """One ragged call: row b = pieces[b] (t_b, D) after states[b] (single-stream states) -> (ys, states)."""
    N, D = layer.config.segment_len, layer.config.d_model
    lens = [len(p) for p in pieces]
    x = torch.zeros(len(rows), max(max(lens), 1), D, dtype=torch.float64)
    for b, p in enumerate(pieces):
        x[b, :len(p)] = p
    with torch.no_grad():
        y, [st] = ragged_step(layer, x, [RaggedState.from_rows(states, N)], torch.tensor(lens))
    for b in range(len(rows)):  # padding gives exact zeros, never anything else
        assert torch.all(y[b, lens[b]:] == 0)
    return [y[b, :lens[b]] for b in range(len(rows))], [st.row(b) for b in range(len(rows))]


@given(config=S.configs(), data=st.data())
def test_rows_equal_streams_run_alone(config, data):
    """Streams join, leave, and bring chunks of drawn sizes; each call carries at most the rest of each
    row's segment (row_lengths), rows in the order of a drawn shuffle."""
    N = config.segment_len
    params = data.draw(S.parameters(config), label="params")
    sched = data.draw(S.schedules(N), label="schedule")
    xs = [np.random.default_rng(s).standard_normal((1, T, config.d_model)) for s, T in enumerate(sched.lengths)]
    layer = InfiniAttention.from_numpy(config, params)
    states = {s: layer.init_state(1) for s in range(len(xs))}
    fed, outs = dict.fromkeys(states, 0), {s: [] for s in states}
    for r in range(sched.rounds):
        want = sched.round(r)
        order = data.draw(st.permutations(sorted(want)), label=f"rows of round {r}")
        left = {s: want[s] for s in order}
        while any(left.values()) or left:  # a zero-token chunk still takes part in one call
            rows = list(left)
            lens = row_lengths([states[s].pending for s in rows], [left[s] for s in rows], N)
            pieces = [torch.from_numpy(xs[s][0, fed[s]:fed[s] + t]) for s, t in zip(rows, lens)]
            ys, new = _call(layer, rows, [states[s] for s in rows], pieces)
            for s, t, y, stt in zip(rows, lens, ys, new):
                outs[s].append(y)
                states[s], fed[s], left[s] = stt, fed[s] + t, left[s] - t
            left = {s: n for s, n in left.items() if n}
    for s, x in enumerate(xs):
        note(f"stream {s}")
        y_ref, st_ref = _alone(config, params, x)
        _check_row(f"stream {s}", torch.cat(outs[s]).numpy(), states[s], y_ref[0], st_ref)


@given(config=S.configs(), data=st.data())
def test_state_kept_in_ragged_layout(config, data):
    """The ragged state carried from call to call as it is (N slots, per-row counters), never converted:
    random per-row lengths within each row's segment, some rows idle (t = 0) in a call."""
    N = config.segment_len
    params = data.draw(S.parameters(config), label="params")
    lengths = data.draw(st.lists(st.integers(1, 3 * N + 1), min_size=1, max_size=4), label="T per row")
    xs = [np.random.default_rng(s).standard_normal((T, config.d_model)) for s, T in enumerate(lengths)]
    layer = InfiniAttention.from_numpy(config, params)
    st_r = RaggedState.from_rows([layer.init_state(1) for _ in xs], N)
    fed, outs = [0] * len(xs), [[] for _ in xs]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed of the per-call lengths"))
    while any(f < T for f, T in zip(fed, lengths)):
        most = row_lengths([int(n) for n in st_r.pending], [T - f for f, T in zip(fed, lengths)], N)
        lens = [int(rng.integers(0, m + 1)) for m in most]
        x = torch.zeros(len(xs), max(max(lens), 1), config.d_model, dtype=torch.float64)
        for b, t in enumerate(lens):
            x[b, :t] = torch.from_numpy(xs[b][fed[b]:fed[b] + t])
        with torch.no_grad():
            y, [st_r] = ragged_step(layer, x, [st_r], torch.tensor(lens))
        for b, t in enumerate(lens):
            outs[b].append(y[b, :t])
            fed[b] += t
        unused = torch.arange(N)[None, :] >= st_r.pending[:, None]  # (B, N) slots past each row's pending
        assert torch.all(st_r.k.transpose(1, 2)[unused] == 0) and torch.all(st_r.v.transpose(1, 2)[unused] == 0)
    for b, x in enumerate(xs):
        y_ref, st_ref = _alone(config, params, x[None])
        _check_row(f"row {b}", torch.cat(outs[b]).numpy(), st_r.row(b), y_ref[0], st_ref)

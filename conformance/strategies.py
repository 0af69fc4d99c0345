"""Every Hypothesis strategy of the project, in one place (tests and the conformance suite use these).

Each draw is labelled with ``note`` so a failing example reads as named values.
Odd sizes are drawn on purpose: T = 1 and 63, segment_len = 1, non-power-of-two dims.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import note
from hypothesis import strategies as st

from ..reference import InfiniConfig, init_params


def _labelled(draw, label: str, strategy):
    value = draw(strategy)
    note(f"{label} = {value!r}")
    return value


def _fixed_or(value, strategy):
    return st.just(value) if value is not None else strategy


@st.composite
def configs(draw, update=None, rope=None, gate_on=None, first_segment=None, gqa=None, max_segment_len=8,
            rope_theta=None, rope_style=None, tie_dims=False, eps=None, min_kv_heads=1, min_head_dim=1,
            min_segment_len=1, tie_model=False, one_head=False):
    """A small InfiniConfig; pass a value to pin an option (``rope`` is True/False).

    Conformance pins (all optional): ``rope_theta``/``rope_style``/``eps`` fix those fields
    (a fixed ``rope_theta`` implies RoPE on); ``tie_dims`` draws ``d_value == d_key``; ``tie_model``
    draws ``d_model == n_heads * d_key``; ``one_head`` draws n_heads = n_kv_heads = 1;
    ``min_kv_heads``, ``min_head_dim`` and ``min_segment_len`` bound the drawn sizes from below.
    """
    if one_head:
        n_kv, group = 1, 1
    else:
        n_kv = _labelled(draw, "n_kv_heads", st.integers(max(1, min_kv_heads), max(3, min_kv_heads)))
        group = _labelled(draw, "group_size", _fixed_or(None, st.sampled_from([1, 2, 3])) if gqa is None
                          else (st.sampled_from([2, 3]) if gqa else st.just(1)))
    if rope_theta is not None:
        rope = True
    use_rope = _labelled(draw, "rope", _fixed_or(rope, st.booleans()))
    d_keys = [2, 4, 6, 8] if use_rope else [1, 3, 4, 5, 8]
    d_key = _labelled(draw, "d_key", st.sampled_from([d for d in d_keys if d >= min_head_dim]))
    d_value = d_key if tie_dims else _labelled(
        draw, "d_value", st.sampled_from([d for d in (1, 2, 5, 7) if d >= min_head_dim]))
    seg_lens = [n for n in (1, 2, 3, 4, 5, 8) if min_segment_len <= n <= max(max_segment_len, min_segment_len)]
    return InfiniConfig(
        d_model=n_kv * group * d_key if tie_model else _labelled(draw, "d_model", st.sampled_from([1, 3, 5, 8, 12])),
        n_heads=n_kv * group,
        n_kv_heads=n_kv,
        d_key=d_key,
        d_value=d_value,
        segment_len=_labelled(draw, "segment_len", st.sampled_from(seg_lens)),
        update=_labelled(draw, "update", _fixed_or(update, st.sampled_from(["linear", "delta"]))),
        rope_theta=(_labelled(draw, "rope_theta", _fixed_or(rope_theta, st.sampled_from([10.0, 10000.0])))
                    if use_rope else None),
        rope_style=_labelled(draw, "rope_style", _fixed_or(rope_style, st.sampled_from(["half", "interleaved"]))),
        eps=1e-6 if eps is None else eps,
        gate_on=_labelled(draw, "gate_on", _fixed_or(gate_on, st.sampled_from(["memory", "local"]))),
        first_segment=_labelled(draw, "first_segment",
                                _fixed_or(first_segment, st.sampled_from(["gated", "local_only"]))),
    )


def params_from_seed(config: InfiniConfig, seed: int) -> dict:
    """The parameters ``parameters()`` draws for ``seed`` (deterministic, so a failure can be rebuilt)."""
    params = init_params(config, seed)
    params["beta"] = np.random.default_rng(seed + 1).uniform(-3.0, 3.0, config.n_heads)
    return params


def x_from_seed(config: InfiniConfig, batch: int, T: int, seed: int) -> np.ndarray:
    """The input ``inputs()`` draws for ``seed``: x (B, T, D), float64, unit scale."""
    return np.random.default_rng(seed).standard_normal((batch, T, config.d_model))


@st.composite
def parameters(draw, config: InfiniConfig):
    """Random parameters for ``config``; beta drawn per head in [-3, 3]."""
    seed = _labelled(draw, "param_seed", st.integers(0, 2**31 - 1))
    return params_from_seed(config, seed)


@st.composite
def stream_lengths(draw, config: InfiniConfig, max_segments: int = 4):
    """T: odd ones (1, 63), exact multiples of N, and anything up to ``max_segments`` segments plus a partial."""
    N = config.segment_len
    return _labelled(draw, "T", st.one_of(st.sampled_from([1, 63, N, 2 * N]),
                                          st.integers(1, max_segments * N + N - 1)))


@st.composite
def inputs(draw, config: InfiniConfig, T: int):
    """x (B, T, D), float64, unit scale."""
    B = _labelled(draw, "B", st.integers(1, 3))
    seed = _labelled(draw, "x_seed", st.integers(0, 2**31 - 1))
    return x_from_seed(config, B, T, seed)


@st.composite
def splits(draw, T: int, kinds=("whole", "tokens", "random")):
    """Chunk sizes summing to T: one call, token by token, or random cuts (empty chunks included)."""
    kind = _labelled(draw, "split_kind", st.sampled_from(list(kinds)))
    if kind == "whole":
        return [T]
    if kind == "tokens":
        return [1] * T
    cuts = sorted(draw(st.lists(st.integers(0, T), max_size=6)))
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [T])]
    note(f"split = {sizes}")
    return sizes


@st.composite
def aligned_splits(draw, T: int, N: int):
    """Chunk sizes summing to T with every cut on a segment boundary (for implementations without "chunked")."""
    cuts = sorted(set(draw(st.lists(st.integers(0, T // N), max_size=4))))
    bounds = [0] + [c * N for c in cuts if 0 < c * N < T] + [T]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    note(f"split = {sizes}")
    return sizes


@dataclass
class Case:
    config: InfiniConfig
    params: dict
    x: np.ndarray
    split: list[int]
    param_seed: int | None = None  # set by streams(): params == params_from_seed(config, param_seed)
    x_seed: int | None = None  # set by streams(): x == x_from_seed(config, B, T, x_seed)


@st.composite
def cases(draw, max_segments: int = 4, **config_kwargs):
    """A whole test case: config, parameters, input stream and its split into calls."""
    config = draw(configs(**config_kwargs))
    T = draw(stream_lengths(config, max_segments))
    return Case(config, draw(parameters(config)), draw(inputs(config, T)), draw(splits(T)))


@st.composite
def streams(draw, config: InfiniConfig, min_segments: int = 0, max_segments: int = 4, partial: bool = True,
            split: str = "any", max_batch: int = 3):
    """A conformance case for a fixed ``config``, rebuildable from its labelled seeds.

    T spans ``min_segments`` .. ``max_segments`` whole segments, plus a final partial one when
    ``partial``. ``split``: "whole" (one call), "any" (``splits()``), "multi" (``splits()``
    without "whole") or "aligned" (cuts on segment boundaries only).
    """
    N = config.segment_len
    if partial:
        T = _labelled(draw, "T", st.integers(max(1, min_segments * N), max_segments * N + N - 1))
    else:
        T = N * _labelled(draw, "segments", st.integers(max(1, min_segments), max(1, max_segments)))
        note(f"T = {T}")
    B = _labelled(draw, "B", st.integers(1, max_batch))
    param_seed = _labelled(draw, "param_seed", st.integers(0, 2**31 - 1))
    x_seed = _labelled(draw, "x_seed", st.integers(0, 2**31 - 1))
    if split == "whole":
        sizes = [T]
    elif split == "aligned":
        sizes = draw(aligned_splits(T, N))
    elif split == "multi":
        sizes = draw(splits(T, kinds=("tokens", "random")))
    else:
        sizes = draw(splits(T))
    return Case(config, params_from_seed(config, param_seed), x_from_seed(config, B, T, x_seed), sizes,
                param_seed, x_seed)


@dataclass
class Schedule:
    """Streams served together (SPEC.md §4.4): stream s joins at round ``joins[s]`` and brings its chunks
    ``chunks[s]`` (sizes, zeros included) one per round from then on; it leaves after its last one."""
    lengths: list[int]  # T of each stream
    joins: list[int]
    chunks: list[list[int]]

    def round(self, r: int) -> dict[int, int]:
        """{stream: chunk size} of the streams that take part in round r."""
        return {s: c[r - j] for s, (j, c) in enumerate(zip(self.joins, self.chunks)) if 0 <= r - j < len(c)}

    @property
    def rounds(self) -> int:
        return max(j + len(c) for j, c in zip(self.joins, self.chunks))


@st.composite
def schedules(draw, N: int, max_streams: int = 5, max_segments: int = 3):
    """Several streams joining and leaving at drawn rounds, each with its own length (odd ones: 1, N, N + 1,
    several segments) and its own random split into chunks."""
    S = _labelled(draw, "streams", st.integers(1, max_streams))
    lengths = [_labelled(draw, f"T[{s}]", st.one_of(st.sampled_from([1, N, N + 1]),
                                                    st.integers(1, max_segments * N + N - 1))) for s in range(S)]
    joins = [_labelled(draw, f"join[{s}]", st.integers(0, 3)) for s in range(S)]
    chunks = [draw(splits(T, kinds=("whole", "random"))) for T in lengths]
    return Schedule(lengths, joins, chunks)

"""Structural properties: causality, batch independence, head layout, GQA mapping (SPEC.md §3, §4.2, §5.2, §6)."""
from __future__ import annotations

from hypothesis import strategies as st

from .base import prop


@prop("causality", "§5.2, §6", budget=0.5)
def causality(check):
    """SPEC.md §5.2, §6: y at token t depends only on tokens <= t: replacing x[:, t0:] leaves y[:, :t0]
    unchanged (local attention is causal; the memory read sees only completed earlier segments)."""
    config = check.config(min_segment_len=2)
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    T = check.ns["T"]
    t0 = check.draw(st.integers(1, T - 1), "t0")
    seed = check.draw(st.integers(0, 2**31 - 1), "x2_seed")
    check.edit(f"x2 = x.copy(); x2[:, {t0}:] = x_from_seed(config, B, T, {seed})[:, {t0}:]")
    check.explain(f"assert_close(run(params, x2, split).y[:, :{t0}], run(params, x, split).y[:, :{t0}])")
    y1 = check.impl_run().y
    y2 = check.impl_run(x=check.ns["x2"]).y
    N = config.segment_len
    check.close(f"y[:, :{t0}] after changing x[:, {t0}:] (token {t0} is offset {t0 % N} of segment {t0 // N})",
                y2[:, :t0], y1[:, :t0],
                hint="an earlier output changed when only later tokens changed: the causal mask admits a later "
                     "key, or the segment is written to memory before its own tokens read it")


@prop("batch_independence", "§4.2", budget=0.5)
def batch_independence(check):
    """SPEC.md §4.2: batch rows are independent streams with their own state: row b of a batched run
    equals the same row run alone (in the same calls)."""
    config = check.config()
    check.stream(config, max_segments=3, split="any", max_batch=2)
    seed = check.draw(st.integers(0, 2**31 - 1), "rows_seed")
    check.edit(f"x = np.concatenate([x, x_from_seed(config, 2, T, {seed})]); B = x.shape[0]")
    check.explain("y = run(params, x, split).y",
                  "for b in (0, B - 1): assert_close(run(params, x[b:b + 1], split).y, y[b:b + 1])")
    x = check.ns["x"]
    y = check.impl_run().y
    for b in (0, x.shape[0] - 1):
        alone = check.impl_run(x=x[b:b + 1]).y
        check.close(f"y of batch row {b} (of {x.shape[0]}) vs the row run alone", y[b:b + 1], alone,
                    hint="a row's output depends on the other rows: keep M, z and the pending keys/values per "
                         "batch element (no reduction over the batch axis)")


@prop("head_layout", "§3.1", budget=0.5)
def head_layout(check):
    """SPEC.md §3.1: head h owns columns h*d:(h+1)*d of x @ wq, x @ wk, x @ wv (a reshape to (B, T, H, d)),
    and y reads the heads concatenated in head order: with H >= 2 and d >= 2, y equals the reference."""
    config = check.config(min_kv_heads=2, min_head_dim=2)
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    check.close("y (H >= 2, head dims >= 2)", check.impl_run().y, check.ref_run().y,
                hint="head h is the contiguous block h*d:(h+1)*d of the projection (reshape (B, T, H, d), "
                     "not (B, T, d, H)); heads are concatenated in order before wo")


@prop("gqa_mapping", "§3.2", requires={"gqa"}, budget=0.5)
def gqa_mapping(check):
    """SPEC.md §3.2: with Hkv >= 2 key/value heads shared by G >= 2 query heads each, query head h uses
    key/value head h // G for local attention and for the memory; y and state equal the reference."""
    config = check.config(gqa=True, min_kv_heads=2)
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    got = check.impl_run(want_state="canonical_state" in check.caps)
    want = check.ref_run()
    hint = (f"query head h must read key/value head h // {config.group_size} (repeat_interleave), not "
            f"h % {config.n_kv_heads}, both in local attention and in the memory read")
    check.close(f"y (H={config.n_heads}, Hkv={config.n_kv_heads})", got.y, want.y, hint=hint)
    if got.states:
        check.close("final state.M", got.states[-1][0], want.states[-1][0], kind="state", hint=hint)

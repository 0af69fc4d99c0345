"""Structural properties, each comparing the implementation with itself: causality, batch independence,
head layout, GQA mapping (SPEC.md §3, §4.2, §5.2, §6). A mistake in the math elsewhere cannot fail them."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .base import prop

CAUSAL_HINT = ("an earlier output changed when only later tokens changed: the causal mask admits a later key, "
               "the segment is written to memory before its own tokens read it, or heads are reshaped without "
               "a transpose (tokens mixed across heads); the diagnosis below tells which")


@prop("causality", "§5.2, §6", budget=0.5)
def causality(check):
    """SPEC.md §5.2, §6: y at token t depends only on tokens <= t: replacing x[:, t0:] by other values leaves
    the implementation's own y[:, :t0] unchanged (local attention is causal; the memory read sees only
    completed earlier segments)."""
    config = check.config(min_segment_len=2)
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    T, x_seed = check.ns["T"], check.example.x_seed
    t0 = check.draw(st.integers(1, T - 1), "t0")
    delta = check.draw(st.integers(0, 2**20), "x2_seed_offset")
    check.edit(f"x2 = x.copy(); x2[:, {t0}:] = x_from_seed(config, B, T, {x_seed + 1 + delta})[:, {t0}:]"
               "  # another seed: the future really changes")
    x, x2 = check.ns["x"], check.ns["x2"]
    if np.array_equal(x2[:, t0:], x[:, t0:]):
        raise RuntimeError(f"causality: the changed input equals the original from token {t0} (suite bug)")
    check.explain(f"assert_close(run(params, x2, split).y[:, :{t0}], run(params, x, split).y[:, :{t0}])")
    y1 = check.impl_run().y
    y2 = check.impl_run(x=x2).y
    N = config.segment_len
    check.close(f"y[:, :{t0}] after changing x[:, {t0}:] (token {t0} is offset {t0 % N} of segment {t0 // N})",
                y2[:, :t0], y1[:, :t0], hint=CAUSAL_HINT)


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
    """SPEC.md §3.1: head h owns columns h*d:(h+1)*d of x @ wq, x @ wk, x @ wv (a reshape to (B, T, H, d))
    and y reads the heads concatenated in head order; so renumbering the heads (permuting those column
    blocks, the row blocks of wo and beta, groups kept together) leaves the implementation's own y unchanged.
    Every head gets the same beta here: per-head gates are gate_limits' rule."""
    mha = "gqa" in check.caps and check.impl.fixed_config is None  # GQA's mapping is gqa_mapping's rule
    config = check.config(gqa=False if mha else None, min_kv_heads=2, min_head_dim=2)
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    seed = check.draw(st.integers(0, 2**31 - 1), "perm_seed")
    check.edit("params['beta'][:] = params['beta'][0]  # one gate value: only the layout is checked")
    check.edit(f"q_order, kv_order = head_permutation(config, {seed}); "
               "params2 = permute_heads(config, params, q_order, kv_order)")
    check.explain("assert_close(run(params2, x, split).y, run(params, x, split).y)  # heads renumbered")
    y1 = check.impl_run().y
    y2 = check.impl_run(params=check.ns["params2"]).y
    check.close(f"y with the heads renumbered {check.ns['q_order']} vs the original order", y2, y1,
                hint="head h is the contiguous block h*d:(h+1)*d of the projection (reshape (B, T, H, d) and "
                     "transpose to (B, H, T, d); not (B, T, d, H), not a reshape to (B, H, T, d) without the "
                     "transpose); heads are concatenated in order before wo")


@prop("gqa_mapping", "§3.2", requires={"gqa"}, budget=0.5)
def gqa_mapping(check):
    """SPEC.md §3.2: query head h uses key/value head h // G, for local attention and for the memory: with
    Hkv >= 2 key/value heads shared by G >= 2 query heads each, y equals the implementation's own y for the
    multi-head config whose key/value head h is a copy of head h // G (and so does its memory); an
    implementation of one fixed config (an ONNX file) is compared with the reference instead."""
    config = check.config(gqa=True, min_kv_heads=2)
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    G = config.group_size
    hint = (f"query head h must read key/value head h // {G} (repeat_interleave), not h % {config.n_kv_heads}, "
            f"both in local attention and in the memory read")
    if check.impl.fixed_config is not None:  # one config only (an ONNX file): pin the mapping by the reference
        check.explain("got, want = run(params, x, split), ref(params, x, split)", "assert_close(got.y, want.y)")
        check.close(f"y (H={config.n_heads}, Hkv={config.n_kv_heads}) vs the reference", check.impl_run().y,
                    check.ref_run().y, hint=hint)
        return
    check.edit("mha, params_mha = expand_kv_heads(config, params)  # key/value head h := head h // G")
    check.explain("got = run(params, x, split); want = Session(s.impl, mha, s.dtype).run(params_mha, x, split)",
                  "assert_close(got.y, want.y)",
                  "if got.states: assert_close(np.repeat(got.states[-1][0], config.group_size, axis=1), "
                  "want.states[-1][0], 'state')")
    want_state = "canonical_state" in check.caps
    mha, params_mha = check.ns["mha"], check.ns["params_mha"]
    got = check.impl_run(want_state=want_state)
    expanded = check.impl_run(params=params_mha, config=mha, want_state=want_state)
    check.close(f"y (H={config.n_heads}, Hkv={config.n_kv_heads}) vs its multi-head copy", got.y, expanded.y,
                hint=hint)
    if got.states:
        M = np.repeat(got.states[-1][0], G, axis=1)
        check.close("final state.M, repeated per query head, vs its multi-head copy", M, expanded.states[-1][0],
                    kind="state", hint=hint)

"""The equations one branch at a time: local attention, gate, first segment, memory rule (SPEC.md §5-§8).

``gate_limits`` and ``first_segment`` compare the implementation with itself (what the gate must do,
whatever the branches compute); ``local_attention`` and ``update_rule`` compare with the reference with
the other branch cut away by the gate, one head, one batch row and one call, so that they pin their own
equations only.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..harness import Failure
from ..transforms import gate_limit, local_weight
from .base import STATE_LINES, prop


@prop("local_attention", "§5.1, §5.2", budget=0.5)
def local_attention(check):
    """SPEC.md §5: with the gate fully on the local branch (one head, one row, one call), y is causal softmax
    attention inside each segment only, scale 1/sqrt(dk), RoPE (when on) at positions = offsets within the
    segment: equal to the reference."""
    config = check.config(one_head=True)
    check.stream(config, min_segments=1, max_segments=3, split="whole", max_batch=1)
    check.edit(f"params['beta'][:] = {gate_limit(config, 'local')}  # gate fully local")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    check.close("y with the gate fully local", check.impl_run().y, check.ref_run().y,
                hint=f"local attention: causal within the segment only, scale {config.attn_scale:.4g} "
                     f"(1/sqrt(d_key={config.d_key}), not 1/sqrt(d_model)), RoPE "
                     + ("off" if config.rope_theta is None else
                        f"{config.rope_style} with theta {config.rope_theta:g} at offsets within the segment"))


@prop("gate_limits", "§8.1, §8.2", budget=0.5)
def gate_limits(check):
    """SPEC.md §8.1-§8.2, on the implementation against itself: with the gate fully local (sigmoid(beta) = 0 on
    the memory branch: beta = -60 under gate_on="memory", +60 under "local") a segment's outputs do not depend
    on earlier segments; fully on memory, an output does not depend on the other tokens of its segment (a read
    of the memory of earlier segments); and each head's own beta_h changes the output (a gate per head)."""
    config = check.config(min_segment_len=3)
    check.stream(config, min_segments=2, max_segments=3, split="whole")
    ns, N = check.ns, config.segment_len
    seed = check.example.x_seed + 1 + check.draw(st.integers(0, 2**20), "x2_seed_offset")  # never x's own seed
    L = check.draw(st.integers(2, N - 1), "tokens_in_segment_1")
    local, memory = gate_limit(config, "local"), gate_limit(config, "memory")
    check.edit(f"x2 = x.copy(); x2[:, :{N}] = x_from_seed(config, B, T, {seed})[:, :{N}]  # segment 0 changed")
    check.edit(f"x3 = x[:, :{N + L}].copy(); x3[:, {N}] = x_from_seed(config, B, 1, {seed})[:, 0]"
               f"  # token {N} (offset 0 of segment 1) changed")
    check.edit(f"p_local = {{**params, 'beta': np.full(config.n_heads, {local})}}; "
               f"p_memory = {{**params, 'beta': np.full(config.n_heads, {memory})}}")
    check.explain(f"assert_close(run(p_local, x2, split).y[:, {N}:], run(p_local, x, split).y[:, {N}:])",
                  f"assert_close(run(p_memory, x3, [{N + L}]).y[:, {N + 1}:], "
                  f"run(p_memory, x[:, :{N + L}], [{N + L}]).y[:, {N + 1}:])")
    other = "local" if config.gate_on == "memory" else "memory"
    hint = (f"with gate_on={config.gate_on!r}, sigmoid(beta) weights the {config.gate_on} branch; an implementation "
            f"that weights the {other} branch must declare --profile gate_on={other}")
    y1 = check.impl_run(params=ns["p_local"]).y
    y2 = check.impl_run(params=ns["p_local"], x=ns["x2"]).y
    check.close(f"y[:, {N}:] with the gate fully local (beta = {local:g}) after changing segment 0", y2[:, N:],
                y1[:, N:], hint=hint, t0=N)
    if "chunked" in check.caps or "whole_stream" in check.caps:  # an unfinished segment 1: nothing written in it
        y3 = check.impl_run(params=ns["p_memory"], x=ns["x"][:, :N + L], split=[N + L]).y
        y4 = check.impl_run(params=ns["p_memory"], x=ns["x3"], split=[N + L]).y
        check.close(f"y[:, {N + 1}:{N + L}] with the gate fully on memory (beta = {memory:g}) after changing "
                    f"token {N}", y4[:, N + 1:], y3[:, N + 1:], hint=hint, t0=N + 1)
    if config.n_heads < 2 or check.shared_gate:
        return
    base = check.impl_run().y
    norm = np.linalg.norm(base, axis=-1) + 1e-30  # per token: y may be huge at some tokens, not at others
    for h in sorted({1, config.n_heads - 1}):  # another head's own gate must count (head 0's changes y anyway)
        old = float(ns["params"]["beta"][h])
        new = memory if old < 0 else local
        p_head = {**ns["params"], "beta": ns["params"]["beta"].copy()}
        p_head["beta"][h] = new
        changed = check.impl_run(params=p_head).y
        if float(np.max(np.linalg.norm(changed - base, axis=-1) / norm)) > 1e-9:  # a used gate moves y by O(1/H)
            continue
        check.edit(f"p_head = {{**params, 'beta': params['beta'].copy()}}; p_head['beta'][{h}] = {new}"
                   f"  # beta of head {h} alone changed: y must change")
        check.explain("assert not np.allclose(run(p_head, x, split).y, run(params, x, split).y)")
        raise Failure(f"y did not change when beta of head {h} alone went from {old:.3g} to {new:g}: one gate "
                      f"for all heads? (SPEC.md §8.1 gives each head its own beta_h; an implementation with a "
                      f"single gate declares config_pins shared_gate=True)")


@prop("first_segment", "§8.2, §6", budget=0.5)
def first_segment(check):
    """SPEC.md §8.2, §6, on the implementation against itself: while nothing has been written (the first
    segment, before its last token) the memory read is exactly 0, so with every head's gate at beta, y is
    y of the gate fully local scaled by the local weight (1 - sigmoid(beta) under gate_on="memory") under
    first_segment="gated", and y of the gate fully local itself under "local_only"."""
    config = check.config(min_segment_len=2)
    check.stream(config, min_segments=0, max_segments=0, split="whole")  # T < N: the first segment, unfinished
    b = check.draw(st.floats(-3.0, 3.0, allow_nan=False), "beta")
    local = gate_limit(config, "local")
    check.edit(f"params['beta'][:] = {b!r}; p_local = {{**params, 'beta': np.full(config.n_heads, {local})}}")
    gated = config.first_segment == "gated"
    w = float(local_weight(config, b)) if gated else 1.0
    check.explain(f"assert_close(run(params, x, split).y, {w!r} * run(p_local, x, split).y)")
    other = "local_only" if gated else "gated"
    rule = (f"{w:.4g} * A_dot (the gated zero read: max(denominator, eps) makes 0/0 exactly 0)" if gated
            else "plain local attention A_dot")
    y = check.impl_run().y
    y_local = check.impl_run(params=check.ns["p_local"]).y
    check.close(f"y of the first segment (beta = {b:.4g}) vs {w:.4g} x y with the gate fully local", y,
                w * y_local, hint=f"with first_segment={config.first_segment!r} the first segment outputs {rule}; an "
                                  f"implementation following the other convention must declare --profile "
                                  f"first_segment={other}")


@prop("update_rule", "§6, §7.1, §7.2", budget=0.5)
def update_rule(check):
    """SPEC.md §6-§7: with the gate fully on memory (one head, one row, whole segments, one call), y after the
    first segment is the memory read alone: M and z grow by the linear (Eq. 6) or delta (Eq. 7) rule from
    pre-RoPE keys, written after the read; y and the final state equal the reference."""
    update = check.draw(st.sampled_from(["linear", "delta"] if "delta" in check.caps else ["linear"]), "update")
    config = check.config(update=update, one_head=True)
    check.stream(config, min_segments=2, max_segments=4, partial=False, split="whole", max_batch=1)
    check.edit(f"params['beta'][:] = {gate_limit(config, 'memory')}  # gate fully on memory")
    check.explain("got, want = run(params, x, split), ref(params, x, split)", "assert_close(got.y, want.y)",
                  *STATE_LINES)
    got = check.impl_run(want_state="canonical_state" in check.caps)
    want = check.ref_run()
    rule = ("M += sigma(K)^T (V - sigma(K) M / max(sigma(K) z, eps))" if update == "delta"
            else "M += sigma(K)^T V")
    hint = (f"update={update!r}: {rule}, z += sum_t sigma(K_t) (accumulated from z = 0), with K before RoPE; each "
            f"segment reads M, z from before it, and is written only once complete")
    N = config.segment_len
    check.close("y of the first segment (memory gate, empty memory)", got.y[:, :N], want.y[:, :N], hint=hint)
    check.close("y of later segments (pure memory reads)", got.y[:, N:], want.y[:, N:], hint=hint, t0=N)
    if got.states:
        check.close("final state.M", got.states[-1][0], want.states[-1][0], kind="state", hint=hint)
        check.close("final state.z", got.states[-1][1], want.states[-1][1], kind="state", hint=hint)

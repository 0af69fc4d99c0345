"""Properties of whole streams: the call contract, agreement with the reference, state, splits (SPEC.md §4, §11)."""
from __future__ import annotations

from .base import STATE_LINES, STATELESS, STATELESS_WHY, prop

SPLIT_HINT = ("results change with the way the stream is cut into calls: carry the state (memory and the pending "
              "keys/values of the unfinished segment) between calls, count RoPE positions from the segment start "
              "(not the call start), and write a segment to memory only when its last token arrives (SPEC.md §4.3)")


@prop("output_contract", "§4.3, §11", budget=0.3)
def output_contract(check):
    """SPEC.md §4.3, §11: every call returns (y, state) with y a finite (B, T, D) array of the checked dtype,
    for any T >= 0 the implementation supports (calls of one token, of several segments, of zero tokens)."""
    config = check.config()
    check.stream(config, max_segments=3, split="any")
    check.explain("y, state = run(params, x, split)  # shape, dtype and finiteness of every call's y")
    check.impl_run()


@prop("outputs", "§4-§8, §11")
def outputs(check):
    """SPEC.md §4-§8, §11: over drawn configs and streams of several segments (one call), y equals the
    reference's y on the same dtype-rounded inputs within the dtype's output tolerance."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=12 if check.thorough else 6, split="whole")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    check.close("y", check.impl_run().y, check.ref_run().y)


@prop("state", "§4.2, §7, §11", requires={"canonical_state"}, not_for=STATELESS, not_for_why=STATELESS_WHY)
def state(check):
    """SPEC.md §4.2, §7, §11: after every call, the canonical state M (B, Hkv, dk, dv) and z (B, Hkv, dk)
    equal the reference's within the dtype's state tolerance (a partial segment leaves them unchanged)."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=8 if check.thorough else 5, split="any")
    check.explain("for (M, z), (M_ref, z_ref) in zip(run(params, x, split).states, ref(params, x, split).states):",
                  "    assert_close(M, M_ref, 'state'); assert_close(z, z_ref, 'state')")
    got, want = check.impl_run(want_state=True), check.ref_run()
    for i, ((M, z), (M_ref, z_ref)) in enumerate(zip(got.states, want.states)):
        check.close(f"state.M after call {i + 1}", M, M_ref, kind="state")
        check.close(f"state.z after call {i + 1}", z, z_ref, kind="state")


@prop("split_invariance", "§4.3", not_for=STATELESS, not_for_why=STATELESS_WHY)
def split_invariance(check):
    """SPEC.md §4.3: outputs and final state depend only on the stream, not on its split into calls: the
    implementation's own token-by-token or randomly cut run (empty calls included) gives the same y and state
    as its own one-call run (compared with itself: a mistake in the math elsewhere cannot fail this)."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=5 if check.thorough else 3, split="multi")
    check.explain("got, want = run(params, x, split), run(params, x, [T])  # its own one-call run",
                  "assert_close(got.y, want.y)", *STATE_LINES)
    T, want_state = check.ns["T"], "canonical_state" in check.caps
    got = check.impl_run(want_state=want_state)
    one = check.impl_run(split=[T], want_state=want_state)
    check.close("y (split calls) vs its own one-call run", got.y, one.y, hint=SPLIT_HINT)
    if got.states:
        check.close("final state.M (split) vs its own one-call run", got.states[-1][0], one.states[-1][0],
                    kind="state", hint=SPLIT_HINT)
        check.close("final state.z (split) vs its own one-call run", got.states[-1][1], one.states[-1][1],
                    kind="state", hint=SPLIT_HINT)


@prop("fresh_stream", "§4.2", budget=0.3)
def fresh_stream(check):
    """SPEC.md §4.2: state=None starts a new stream from M = 0, z = 0, nothing pending: the same instance
    run twice on the same stream from None gives the same y (nothing is kept inside the instance)."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=3, split="any")
    check.explain("impl = make(); y1 = run(params, x, split, impl).y; y2 = run(params, x, split, impl).y",
                  "assert_close(y2, y1)")
    from ..harness import make_instance

    instance = make_instance(check.impl, config, check.dtype)
    first = check.impl_run(instance=instance)
    second = check.impl_run(instance=instance)
    check.close("y of a second stream on the same instance", second.y, first.y,
                hint="state=None must start from an empty memory; keep the memory in the returned state, not in "
                     "the instance")


@prop("long_stream", "§11, §7", budget=0.1)
def long_stream(check):
    """SPEC.md §11, §7, §5.1: hundreds of segments in one call (RoPE on when supported): the last segments'
    outputs and the final state stay within tolerance of the reference (no drift as M and z accumulate)."""
    config = check.config(max_segment_len=4, rope=True if "rope" in check.caps else None)
    lo, hi = (300, 1000) if check.thorough else (100, 200)
    check.stream(config, min_segments=lo, max_segments=hi, partial=False, split="whole", max_batch=2)
    check.explain("got, want = run(params, x, split), ref(params, x, split)",
                  "assert_close(got.y[:, -10 * config.segment_len:], want.y[:, -10 * config.segment_len:])",
                  "assert_close(got.y, want.y)", *STATE_LINES)
    got = check.impl_run(want_state="canonical_state" in check.caps)
    want = check.ref_run()
    tail = 10 * config.segment_len
    T = check.ns["T"]
    check.close(f"y of the last 10 segments (of {T // config.segment_len})", got.y[:, -tail:], want.y[:, -tail:],
                t0=T - tail, hint="errors that grow along the stream: keep M and z in float32 or wider, RoPE "
                                  "positions within the segment (SPEC.md §5.1, §11)")
    check.close("y (whole stream)", got.y, want.y)
    if got.states:
        check.close("final state.M", got.states[-1][0], want.states[-1][0], kind="state")
        check.close("final state.z", got.states[-1][1], want.states[-1][1], kind="state")


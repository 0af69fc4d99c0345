"""The equations one branch at a time: local attention, gate, first segment, memory rule (SPEC.md §5-§8)."""
from __future__ import annotations

from hypothesis import strategies as st

from .base import prop

BIG = 30.0  # sigmoid(30) = 1 - 9.4e-14: the gate is fully on one branch


def _branch_beta(config, branch: str) -> float:
    """The beta that puts sigmoid(beta) = 1 on ``branch`` ("memory" or "local") under config.gate_on (§8.2)."""
    return BIG if config.gate_on == branch else -BIG


@prop("local_attention", "§5.1, §5.2", budget=0.5)
def local_attention(check):
    """SPEC.md §5: with the gate fully on the local branch, y is causal softmax attention inside each
    segment only, scale 1/sqrt(dk), RoPE (when on) at positions = offsets within the segment."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=3, split="any")
    check.edit(f"params['beta'][:] = {_branch_beta(config, 'local')}  # gate fully local")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    check.close("y with the gate fully local", check.impl_run().y, check.ref_run().y,
                hint=f"local attention: causal within the segment only, scale {config.attn_scale:.4g} "
                     f"(1/sqrt(d_key={config.d_key}), not 1/sqrt(d_model)), RoPE "
                     + ("off" if config.rope_theta is None else
                        f"{config.rope_style} with theta {config.rope_theta:g} at offsets within the segment"))


@prop("gate_limits", "§8.1, §8.2", budget=0.5)
def gate_limits(check):
    """SPEC.md §8.1-§8.2: with beta_h = +-30 (drawn per head) each head is purely memory or purely local:
    sigmoid(beta) weights the memory branch under gate_on="memory" (the local one under "local")."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=3, split="whole")
    signs = check.draw(st.lists(st.sampled_from([-1, 1]), min_size=config.n_heads, max_size=config.n_heads),
                       "beta_signs")
    check.edit(f"params['beta'] = np.array({[float(BIG * s) for s in signs]})")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    other = "local" if config.gate_on == "memory" else "memory"
    check.close("y with every head's gate at a limit", check.impl_run().y, check.ref_run().y,
                hint=f"with gate_on={config.gate_on!r}, sigmoid(beta) weights the {config.gate_on} branch; an "
                     f"implementation that weights the {other} branch must declare --profile gate_on={other}")


@prop("first_segment", "§8.2, §6", budget=0.5)
def first_segment(check):
    """SPEC.md §8.2, §6: on the stream's first segment the memory is empty (read exactly 0): y is
    (1 - sigmoid(beta)) A_dot under first_segment="gated", plain local attention under "local_only"."""
    config = check.config()
    check.stream(config, min_segments=1, max_segments=1, partial=False, split="any")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)  # T = segment_len")
    other = "local_only" if config.first_segment == "gated" else "gated"
    rule = ("(1 - s) * A_dot, the gated zero read (max(denominator, eps) makes 0/0 exactly 0)"
            if config.first_segment == "gated" else "plain local attention A_dot")
    check.close("y of the first segment", check.impl_run().y, check.ref_run().y,
                hint=f"with first_segment={config.first_segment!r} the first segment outputs {rule}; an "
                     f"implementation following the other convention must declare --profile first_segment={other}")


@prop("update_rule", "§6, §7.1, §7.2", budget=0.5)
def update_rule(check):
    """SPEC.md §6-§7: with the gate fully on memory, y after the first segment is the memory read alone:
    M and z grow by the linear (Eq. 6) or delta (Eq. 7) rule from pre-RoPE keys, written after the read."""
    update = check.draw(st.sampled_from(["linear", "delta"] if "delta" in check.caps else ["linear"]), "update")
    config = check.config(update=update)
    check.stream(config, min_segments=2, max_segments=4, split="whole")
    check.edit(f"params['beta'][:] = {_branch_beta(config, 'memory')}  # gate fully on memory")
    check.explain("assert_close(run(params, x, split).y, ref(params, x, split).y)")
    got = check.impl_run(want_state="canonical_state" in check.caps)
    want = check.ref_run()
    rule = ("M += sigma(K)^T (V - sigma(K) M / max(sigma(K) z, eps))" if update == "delta"
            else "M += sigma(K)^T V")
    hint = (f"update={update!r}: {rule}, z += sum_t sigma(K_t) (accumulated), with K before RoPE; each segment "
            f"reads M, z from before it, and is written only once complete")
    N = config.segment_len
    check.close("y of the first segment (memory gate, empty memory)", got.y[:, :N], want.y[:, :N], hint=hint)
    check.close("y of later segments (pure memory reads)", got.y[:, N:], want.y[:, N:], hint=hint)
    if got.states:
        check.close("final state.M", got.states[-1][0], want.states[-1][0], kind="state", hint=hint)
        check.close("final state.z", got.states[-1][1], want.states[-1][1], kind="state", hint=hint)

"""Probes of the gate, the first segment, causality and the head layout (SPEC.md §3, §5.2, §8).

Each probe is an experiment on the implementation against itself, on a config that cuts the other rules
away (one head, one row, one call, a gate at a limit), and returns evidence (class, strength, text).
"""
from __future__ import annotations

import numpy as np

from ..transforms import expand_kv_heads, gate_limit, interleaved_to_blocks, permute_heads, strided_permutation
from .lab import Inconclusive, Lab, rel


def gate_orientation(lab: Lab) -> list:
    """With beta at each limit, does a later segment depend on an earlier one? Only the memory branch can."""
    c = lab.config(N=4)
    N = c.segment_len
    x = lab.x(c, 3 * N)
    x2 = x.copy()
    x2[:, :N] = lab.x(c, N, seed=7)
    sens = {}
    for branch in ("local", "memory"):
        p = lab.params(c, beta=gate_limit(c, branch))
        sens[branch] = rel(lab.run(c, p, x2).y[:, 2 * N:], lab.run(c, p, x).y[:, 2 * N:])
    lo, hi = gate_limit(c, "local"), gate_limit(c, "memory")
    if sens["local"] <= 1e-6 and sens["memory"] > 1e-6:
        lab.local_beta, lab.memory_beta = lo, hi
        lab.facts["gate"] = "as declared"
        return []
    if sens["memory"] <= 1e-6 and sens["local"] > 1e-6:
        lab.local_beta, lab.memory_beta = hi, lo
        lab.facts["gate"] = "swapped"
        weighted = "local" if c.gate_on == "memory" else "memory"
        return [("gate_swapped", 0.9, f"with beta = {lo:g} (the gate fully local under gate_on={c.gate_on}) "
                                      f"segment 2's output moves by {sens['local']:.2g} when segment 0 changes, "
                                      f"with beta = {hi:g} by {sens['memory']:.2g}: sigmoid(beta) weights the "
                                      f"{weighted} branch")]
    lab.notes.append(f"gate probe inconclusive (sensitivity to an earlier segment: {sens['local']:.2g} at beta "
                     f"{lo:g}, {sens['memory']:.2g} at {hi:g})")
    return []


def first_segment(lab: Lab) -> list:
    """The first segment before anything is written: y at both limits and at beta = 1."""
    c = lab.config(N=4)
    N = c.segment_len
    T = N - 1 if lab.partial_calls else N
    x = lab.x(c, T)
    y = {b: lab.run(c, lab.params(c, beta=b), x).y for b in (lab.beta(c, "local"), lab.beta(c, "memory"), 1.0)}
    if any(not np.all(np.isfinite(v)) for v in y.values()):
        return [("no_eps", 0.9, "NaN/Inf on the first segment, where M = z = 0: the memory read divides 0 by 0 "
                                "(no max(sigma(q) . z, eps) floor)")]
    y_local, y_memory = y[lab.beta(c, "local")], y[lab.beta(c, "memory")]
    scale = float(np.linalg.norm(y_local)) or 1.0
    plain = lab.same(y_memory, y_local)
    zero = float(np.linalg.norm(y_memory)) <= 1e-6 * scale
    if lab.facts.get("gate") is None and not plain:  # the side that reads 0 is the memory side
        side = float(np.linalg.norm(y[gate_limit(c, "memory")])) <= 1e-6 * scale
        lab.local_beta, lab.memory_beta = (gate_limit(c, "local"), gate_limit(c, "memory")) if side else \
            (gate_limit(c, "memory"), gate_limit(c, "local"))
    if c.first_segment == "gated" and plain:
        return [("local_only_undeclared", 0.9, "on the first segment the output is the same with the gate fully "
                                               "on memory as fully local (plain local attention), where the "
                                               "declared first_segment=gated reads an exact 0 from memory")]
    if c.first_segment == "local_only" and zero:
        return [("local_only_undeclared", 0.8, "declared first_segment=local_only, but with the gate fully on "
                                               "memory the first segment outputs 0 (the gated convention)")]
    return []


def causality(lab: Lab) -> list:
    """Next-token and far-future dependence with the gate fully local, at one head and at two."""
    out = []
    c = lab.config(N=6)
    N = c.segment_len
    x = lab.x(c, 2 * N)
    p = lab.params(c, beta=lab.beta(c, "local"))
    x2 = x.copy()
    x2[:, N + 1] = lab.x(c, 1, seed=5)[:, 0]
    base = lab.run(c, p, x).y
    if lab.differs(lab.run(c, p, x2).y[:, N], base[:, N]):
        out.append(("causal_off_by_one", 0.9, f"with the gate fully local, token {N}'s output (offset 0 of "
                                               f"segment 1) changes when only token {N + 1} changes: the causal "
                                               f"mask admits the next key"))
    far = x.copy()
    far[:, N + 2:] = lab.x(c, N - 2, seed=6)
    one = lab.differs(lab.run(c, p, far).y[:, N], base[:, N])
    try:
        c2 = lab.config(H=2, dk=lab.small, dv=lab.small, D=5, N=6)
        p2 = lab.params(c2, beta=lab.beta(c2, "local"))
        x_2 = lab.x(c2, 2 * N)
        far_2 = x_2.copy()
        far_2[:, N + 2:] = lab.x(c2, N - 2, seed=6)
        two = lab.differs(lab.run(c2, p2, far_2).y[:, N], lab.run(c2, p2, x_2).y[:, N])
    except Inconclusive:
        two = None
    if two and not one:
        lab.facts["token_mixing"] = True
        out.append(("head_no_transpose", 0.9, f"with two heads, token {N}'s output depends on tokens {N + 2}.. of "
                                              f"its segment; with one head it does not: the heads' reshape mixes "
                                              f"tokens (a (B, H, T, d) view of (B, T, H*d) without the transpose)"))
    elif one:
        lab.notes.append(f"with one head and the gate fully local, token {N}'s output depends on tokens "
                         f"{N + 2}.. of its segment (a causality fault no known class explains)")
    return out


def _variants(lab: Lab, c, p, x, q, kv):
    """(renumbering column blocks clearly changes y, renumbering strided columns leaves it the same)."""
    y = lab.run(c, p, x).y
    return (lab.differs(lab.run(c, permute_heads(c, p, q, kv), x).y, y),
            lab.same(lab.run(c, strided_permutation(c, p, q, kv), x).y, y))


def heads(lab: Lab) -> list:
    """A single gate for all heads, then head renumbering by column blocks (§3.1) vs by strided columns h::H
    (over two segments: softmax is per head; at one token when the reshape mixes tokens), then GQA."""
    out = []
    c = lab.config(H=3, dk=lab.small, dv=lab.small, D=5, N=4)  # 3 heads of 2 and a transposition: no symmetry of either layout
    xT = lab.x(c, 2 * c.segment_len)
    shared = lab.pins.get("shared_gate") is True
    betas = [1.5, -1.0, 0.4]
    if not shared:
        base = lab.run(c, lab.params(c, beta=betas), xT).y
        if rel(lab.run(c, lab.params(c, beta=[1.5, 2.5, -2.0]), xT).y, base) <= 1e-12:
            shared = True
            out.append(("shared_gate", 0.9, "changing beta of head 1 alone leaves y exactly unchanged: head 0's "
                                            "gate weights every head"))
    q = kv = [1, 0, 2]
    if lab.facts.get("token_mixing"):  # one token: no reshape can mix tokens; the gates carry the layout
        moved, strided = _variants(lab, c, lab.params(c, beta=0.5 if shared else betas), lab.x(c, 1), q, kv)
    else:
        moved, strided = _variants(lab, c, lab.params(c, beta=0.5), xT, q, kv)
    if moved and strided:
        lab.facts["layout"] = "strided"
        out.append(("head_interleave", 0.9, "renumbering the heads as column blocks h*d:(h+1)*d changes y, "
                                            "renumbering them as strided columns h::H does not: heads are a "
                                            "(B, T, d, H) reshape"))
    elif moved and not lab.facts.get("token_mixing"):
        out.append(("head_interleave", 0.5, "renumbering the heads as column blocks h*d:(h+1)*d changes y (the "
                                            "heads are laid out neither as blocks nor as strided columns)"))
    try:
        return out + _gqa(lab)
    except Inconclusive as exc:
        lab.notes.append(f"GQA probe not run: {exc}")
        return out


def _gqa(lab: Lab) -> list:
    c = lab.config(H=4, Hkv=2, dk=lab.small, dv=lab.small, D=5, N=4)
    p = lab.params(c, beta=0.3)
    if lab.facts.get("layout") == "strided":  # correct the layout first, so only the mapping is tested
        p_run = interleaved_to_blocks(c, p)
        mha, p_mha = expand_kv_heads(c, p)
        mha_tile, p_tile = expand_kv_heads(c, p, "h % Hkv")
        p_mha, p_tile = interleaved_to_blocks(mha, p_mha), interleaved_to_blocks(mha_tile, p_tile)
    else:
        p_run, (mha, p_mha), (mha_tile, p_tile) = p, expand_kv_heads(c, p), expand_kv_heads(c, p, "h % Hkv")
    x = lab.x(c, 1 if lab.facts.get("token_mixing") else 2 * c.segment_len)
    y = lab.run(c, p_run, x).y
    y_mha = lab.run(mha, p_mha, x).y
    if lab.same(y_mha, y):
        return []
    if lab.same(lab.run(mha_tile, p_tile, x).y, y):
        return [("gqa_modulo", 0.9, "the grouped-query run equals its multi-head copy with key/value head h % Hkv, "
                                    "not h // G: query heads are tiled over the key/value heads")]
    if lab.differs(y_mha, y):
        return [("gqa_modulo", 0.5, "the grouped-query run differs from its multi-head copy with key/value head "
                                    "h // G")]
    return []

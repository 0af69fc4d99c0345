"""Probes of the stream (state, splits, batch), the memory and local paths (fitted variants), gradients and
RoPE positions (SPEC.md §4, §5, §6, §7, §11). Same contract as ``probes_gate``: (class, strength, text)."""
from __future__ import annotations

import numpy as np

from ..guard import Failure
from ..harness import make_instance, round_to
from .lab import DIFFERS, Inconclusive, Lab, rel
from .models import LOCAL_DEPARTURES, MEMORY_DEPARTURES, candidates, local_path, memory_path


def stream(lab: Lab) -> list:
    """Aligned and mid-segment splits against the same implementation's one call, at each gate limit."""
    if not lab.streaming:
        raise Inconclusive("a whole_stream implementation keeps no state between calls")
    out = []
    c = lab.config(N=4, rope="rope" in lab.caps)
    N = c.segment_len
    x = lab.x(c, 3 * N)
    pm, pl = lab.params(c, beta=lab.beta(c, "memory")), lab.params(c, beta=lab.beta(c, "local"))
    one_m = lab.run(c, pm, x).y
    if lab.differs(lab.run(c, pm, x, [N, N, N]).y, one_m):
        out.append(("state_not_carried", 0.9, "calls cut on segment boundaries give other outputs than one call, "
                                              "with the gate fully on memory: the memory is not carried"))
        return out
    canonical, partial = "canonical_state" in lab.caps, False
    if canonical:  # the state tells a partial write apart from any effect on the reads
        try:
            M_part = lab.run(c, pm, x[:, :N + 2], want_state=True).states[-1][0]
            M_seg = lab.run(c, pm, x[:, :N], want_state=True).states[-1][0]
        except Inconclusive:  # a call ending mid-segment refused (no "chunked")
            canonical = False
        else:
            partial = lab.differs(M_part, M_seg)
        beyond = "" if lab.partial_calls else " (a call ending mid-segment: beyond its declared capabilities)"
        evidence = f"a call of {N + 2} tokens leaves another M than one of {N}{beyond}"
    if not lab.partial_calls:
        if canonical and partial:
            out.append(("write_partial", 0.85, f"{evidence}: the unfinished segment was written"))
        return out
    cut = [N + 2, 2 * N - 2]
    split_m = lab.run(c, pm, x, cut).y
    rest, later = slice(N + 2, 2 * N), slice(2 * N, 3 * N)
    rest_moved, later_moved = lab.differs(split_m[:, rest], one_m[:, rest]), lab.differs(split_m[:, later],
                                                                                        one_m[:, later])
    if not canonical:
        partial = rest_moved
        evidence = (f"with the gate fully on memory, tokens {N + 2}..{2 * N - 1} read another memory after a call "
                    f"ended at token {N + 1} mid-segment")
    if partial:
        out.append(("write_partial", 0.85, f"{evidence}: the unfinished segment was written"))
    elif later_moved:
        out.append(("no_pending_kv", 0.8, f"after a call ended mid-segment, the next segment ({2 * N}..) reads "
                                          f"another memory than in one call: its boundary moved (the pending "
                                          f"keys/values were dropped)"))
    elif rest_moved and c.rope_theta is not None:
        out.append(("rope_call_positions", 0.6, f"with the gate fully on memory, tokens {N + 2}.. of a segment cut "
                                                f"by a call read otherwise, though nothing was written: query "
                                                f"positions counted from the call start (and RoPE on the memory)"))
    one_l, split_l = lab.run(c, pl, x).y, lab.run(c, pl, x, cut).y
    t = N + 2
    if c.rope_theta is not None and lab.differs(split_l[:, t], one_l[:, t]) and not partial and not later_moved:
        v_only = x[0, t] @ pl["wv"] @ pl["wo"]
        if not lab.same(split_l[0, t], v_only):
            out.append(("rope_call_positions", 0.8, f"with the gate fully local, token {t} (offset 2, first of a "
                                                    f"call) attends otherwise than in one call, yet not to itself "
                                                    f"alone: RoPE positions counted from the call start"))
    return out


def batch_and_instance(lab: Lab) -> list:
    out = []
    c = lab.config(N=3)
    p = lab.params(c, beta=0.3)
    x = lab.x(c, 3 * c.segment_len, B=2)
    y = lab.run(c, p, x).y
    if lab.differs(y[1:], lab.run(c, p, x[1:]).y):
        out.append(("memory_shared_across_batch", 0.9, "a batch row's outputs change when another row runs beside "
                                                       "it: the memory is shared across the batch"))
    inst = make_instance(lab.impl, c, lab.dtype)
    first = lab.run(c, p, x[:1], instance=inst).y
    if lab.differs(lab.run(c, p, x[:1], instance=inst).y, first):
        out.append(("memory_in_instance", 0.9, "the same instance run twice from state=None gives other outputs "
                                               "the second time: the memory lives in the instance"))
    return out


def _fit(lab: Lab, want, model, names, size=3) -> tuple:
    """The departure set whose model is closest to ``want`` (the implementation's (y, M, z) or y)."""
    best, spec_err = None, None
    for combo in candidates(names, size):
        if sum(n.startswith("rope_on_memory") for n in combo) > 1:
            continue
        err = max(rel(w, m) for w, m in zip(want, model(combo)))
        if spec_err is None:
            spec_err = err
        if best is None or err < best[1]:
            best = (combo, err)
    return best[0], best[1], spec_err


def _fit_evidence(lab: Lab, combo, err, spec_err, where: str) -> list:
    if not combo or not spec_err > DIFFERS[lab.dtype] or not err < 0.05 * spec_err:
        return []
    strength = 0.85 if err <= 10 * DIFFERS[lab.dtype] else 0.6
    names = [n.replace("@stream", "") for n in combo]
    text = (f"{where}: the spec with {' + '.join(combo)} reproduces the implementation (relative error "
            f"{err:.2g}, the spec itself {spec_err:.2g})")
    return [(n, strength, text) for n in names]


def memory_fit(lab: Lab) -> list:
    """The gate fully on memory, one head: which variant of Eq. 5-7 reproduces y (and M, z)?"""
    out = []
    for update in ("linear", "delta") if "delta" in lab.caps else ("linear",):
        try:
            c = lab.config(dk=3, dv=2, D=4, N=3, rope="rope" in lab.caps, update=update)
        except Inconclusive:
            continue
        N, want_state = c.segment_len, "canonical_state" in lab.caps
        p = lab.params(c, seed=1, beta=lab.beta(c, "memory"))
        x = lab.x(c, 4 * N, seed=1)
        run = lab.run(c, p, x, want_state=want_state)
        want = [run.y[:, N:]] + (list(run.states[-1]) if run.states else [])
        names = [n for n in MEMORY_DEPARTURES if (n != "delta_ignored" or c.update == "delta")
                 and (not n.startswith("rope") or c.rope_theta is not None)]

        def model(combo):
            y, M, z = memory_path(c, {k: round_to(v, lab.dtype) for k, v in p.items()}, round_to(x, lab.dtype),
                                  combo)
            return [y[:, N:]] + ([M, z] if want_state else [])

        combo, err, spec_err = _fit(lab, want, model, names)
        out += _fit_evidence(lab, combo, err, spec_err, f"gate fully on memory, update={update}")
        if update == "delta":
            lin = lab.run(c.replace(update="linear"), p, x).y
            if rel(run.y, lin) <= 1e-12:
                out.append(("delta_ignored", 0.9, "update='delta' gives exactly the linear rule's outputs"))
    return out


def local_fit(lab: Lab) -> list:
    """The gate fully local, one head, d_model != d_key: which scale and mask reproduce y?"""
    c = lab.config(dk=lab.small, dv=3, D=9, N=4)
    if c.d_model == c.d_key:
        raise Inconclusive("d_model is tied to d_key at one head: the scale cannot be told")
    p = lab.params(c, seed=2, beta=lab.beta(c, "local"))
    x = 3.0 * lab.x(c, 2 * c.segment_len, seed=2)  # larger scores: the scale matters more
    N = c.segment_len
    y = lab.run(c, p, x).y[:, N:]  # segment 1: the first segment may hold a NaN read (0 x NaN is NaN)
    pr, xr = {k: round_to(v, lab.dtype) for k, v in p.items()}, round_to(x, lab.dtype)
    combo, err, spec_err = _fit(lab, [y], lambda combo: [local_path(c, pr, xr, combo)[:, N:]], LOCAL_DEPARTURES, 2)
    return _fit_evidence(lab, combo, err, spec_err, "gate fully local")


def gradient_memory(lab: Lab) -> list:
    """The gate fully on memory, dy on segment 1 only: d/dx of segment 0 flows through the memory alone."""
    if "grad" not in lab.caps:
        raise Inconclusive("no grad capability")
    c = lab.config(N=3)
    N = c.segment_len
    p = lab.params(c, beta=lab.beta(c, "memory"))
    x = lab.x(c, 2 * N)
    dy = np.zeros_like(x)
    dy[:, N:] = np.random.default_rng(3).standard_normal(dy[:, N:].shape)
    from ..properties.gradients import implementation_grads
    try:
        g = implementation_grads(lab.impl, c, lab.dtype, p, x, dy)["x"]
    except Failure as exc:
        raise Inconclusive(f"grad failed: {str(exc)[:200]}") from None
    through, direct = float(np.linalg.norm(g[:, :N])), float(np.linalg.norm(g[:, N:]))
    if direct > 0 and through <= 1e-9 * direct:
        return [("memory_detached", 0.9, "with the gate fully on memory and a loss on segment 1 only, the gradient "
                                         "reaching segment 0's tokens (only through the memory) is 0: M, z detached")]
    return []


def rope_positions(lab: Lab) -> list:
    """The same segment far into a stream and near its start, gate fully local, at the checked dtype."""
    if lab.low == "float64" or lab.facts.get("gate") is None:
        raise Inconclusive("needs a low-precision dtype and a known gate orientation")
    N, K = 4, 250
    for theta in (10.0, 10000.0):  # small theta: every pair rotates, rounding shows; a layer may fix its own
        c = lab.config(N=N, dk=8, rope=True, theta=theta)
        p = lab.params(c, seed=4, beta=lab.beta(c, "local"))
        target = 3.0 * lab.x(c, N, seed=9)  # larger scores: angle errors move the softmax more
        far = np.concatenate([lab.x(c, K * N, seed=4), target], axis=1)
        near = np.concatenate([lab.x(c, N, seed=4), target], axis=1)
        try:
            y_near = lab.run(c, p, near, dtype=lab.low).y[:, -N:]
        except Inconclusive:
            if theta == 10000.0:
                raise
            continue
        y_far = lab.run(c, p, far, dtype=lab.low).y[:, -N:]
        break
    d = rel(y_far, y_near)  # exact 0 for RoPE at segment offsets: the same segment, the same arithmetic
    if d > {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}.get(lab.low, 1e-6):
        return [("rope_stream_positions", 0.8, f"with the gate fully local at {lab.low}, a segment's output differs "
                                               f"by {d:.2g} at stream position {K * N} from position {N} (exactly 0 "
                                               f"for positions within the segment): RoPE positions from the stream "
                                               f"start")]
    return []

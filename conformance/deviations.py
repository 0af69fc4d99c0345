"""The deviation classes: the mistakes the diagnosis names, each realised by one mutant of the same name.

One table, without torch: ``mutants.py`` builds its broken implementations from it and the diagnosis
(``diagnosis/``) names its causes by it. Each class says what the mistake is, the SPEC.md section it
breaks, the property meant to reject it, and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    mistake: str
    property: str  # the property that names it (tests/test_conformance_mutants.py)
    spec: str
    fix: str


_D = Deviation
DEVIATIONS = {
    "gate_swapped": _D("sigmoid(beta) always weights the local branch (undeclared gate_on=local)", "gate_limits",
                       "§8.1, §8.2", "weight the memory branch by sigmoid(beta), or declare --profile gate_on=local"),
    "update_before_read": _D("the segment is written to memory before its own tokens read it", "causality", "§6",
                             "read M, z as they stood before the segment; write after its last token"),
    "rope_on_memory": _D("RoPE applied to the queries/keys that read and write the memory", "update_rule",
                         "§5.1, §6, §7", "apply RoPE only to local attention's q and k; the memory uses them before"),
    "gqa_modulo": _D("query head h uses key/value head h % Hkv instead of h // G", "gqa_mapping", "§3.2",
                     "repeat_interleave the key/value heads (head h reads h // G), in attention and memory"),
    "no_eps": _D("memory read divides by sigma(q).z without the max(., eps) floor (0/0 on the first segment)",
                 "first_segment", "§6", "divide by max(sigma(q) . z, eps)"),
    "z_not_accumulated": _D("z is overwritten with the last segment's sum instead of accumulated", "update_rule",
                            "§7.1", "z += sum_t sigma(K_t) over every completed segment"),
    "z_init_nonzero": _D("the normaliser z starts at 1 instead of 0", "update_rule", "§4.2, §13",
                         "start a stream from M = 0 and z = 0"),
    "delta_ignored": _D("update='delta' silently uses the linear rule", "update_rule", "§7.2",
                        "subtract sigma(K) M / max(sigma(K) z, eps) from V before writing"),
    "rope_stream_positions": _D("RoPE positions counted from the stream start, not the segment start, angles in "
                                "the compute dtype (exact math cannot tell: RoPE is relative)", "long_stream",
                                "§5.1, §11", "rotate by the offset within the segment (t mod N)"),
    "rope_call_positions": _D("RoPE query positions counted from the call start (decode steps all at 0)",
                              "split_invariance", "§4.3, §5.1", "a query's position is its offset in the segment, "
                              "pending tokens included"),
    "scale_d_model": _D("softmax scale 1/sqrt(d_model) (the paper's typo) instead of 1/sqrt(d_key)",
                        "local_attention", "§5.2", "scale the scores by 1/sqrt(d_key)"),
    "write_partial": _D("a call ending mid-segment writes its partial segment to memory", "split_invariance",
                        "§4.3, §7", "keep an unfinished segment's keys/values pending; write it when it completes"),
    "head_interleave": _D("heads reshaped as (B, T, d, H): head h owns columns h::H", "head_layout", "§3.1",
                          "reshape (B, T, H*d) to (B, T, H, d): head h owns columns h*d:(h+1)*d"),
    "head_no_transpose": _D("(B, T, H*d) reshaped to (B, H, T, d) without the transpose: tokens mixed across "
                            "heads", "head_layout", "§3.1",
                            "reshape to (B, T, H, d), then transpose to (B, H, T, d)"),
    "shared_gate": _D("one gate for all heads: beta[0] weights every head", "gate_limits", "§8.1",
                      "one beta per head, or declare config_pins shared_gate=True (reported as a deviation)"),
    "state_not_carried": _D("the state argument is ignored: every call starts a new stream", "split_invariance",
                            "§4.2, §4.3", "continue from the state the previous call returned"),
    "no_pending_kv": _D("keys/values of the unfinished segment are not kept between calls", "split_invariance",
                        "§4.2, §4.3", "carry the unfinished segment's (pre-RoPE) keys and values in the state"),
    "causal_off_by_one": _D("the causal mask lets each query see the next token", "causality", "§5.2",
                            "query at offset i sees keys 0 .. i of its segment"),
    "bf16_state": _D("M and z stored in bfloat16 (SPEC.md §11 asks for float32 or wider)", "long_stream", "§11",
                     "keep M and z in float32 or wider"),
    "local_only_undeclared": _D("first segment is plain local attention (undeclared first_segment=local_only)",
                                "first_segment", "§8.2",
                                "gate the first segment too (its read is 0), or declare --profile "
                                "first_segment=local_only"),
    "sigma_no_plus_one": _D("sigma = elu (the +1 forgotten)", "update_rule", "§6", "sigma(x) = elu(x) + 1"),
    "memory_shared_across_batch": _D("one memory for the whole batch (writes summed over rows)",
                                     "batch_independence", "§4.2", "keep M, z per batch row"),
    "memory_in_instance": _D("the memory lives in the instance: state=None does not reset it", "fresh_stream",
                             "§4.2", "keep the memory in the returned state; state=None starts from zeros"),
    "memory_detached": _D("M and z detached after every write (no backpropagation through the memory)",
                          "gradients", "§11", "do not detach M, z between segments while training"),
}

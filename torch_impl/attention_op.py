"""Local attention and RoPE in the shape of the standard ONNX ``Attention`` and ``RotaryEmbedding`` ops (opset 23),
for the ONNX export.

``attend_past(q, k_past, v_past, k, v, scale)`` is Eq. 3 (SPEC.md §5.2) for t new queries that follow
n pending positions: keys and values are the n past ones then the t new ones, and query i (offset
n + i) sees keys 0 .. n + i (the bottom-right causal mask). It is a torch custom op, so that
torch.export keeps it as one node and the exporter maps it onto one ``Attention`` node with
``past_key``/``past_value`` inputs (whose ``is_causal`` mask is aligned bottom-right exactly because the
pending keys come in as past: verified against ONNX Runtime and ``onnx.reference`` by
tests/test_export_attention_op.py). Eagerly it is SDPA with that mask.

``attention_op`` has the signature of ``naive.local_attention`` and is its swap: ``ATTENTION_OP =
naive.SPEC.replace(local_attention=attention_op)``. In every form that calls it (``naive.segment_piece``
and ``chunk.chunk_forward``) the queries are the last t of the L positions and the mask is
``naive.visible(L - t, t)``, which is what ``attend_past`` computes; so the mask argument is not
read (tests/test_export_forms.py proves the swap equal to the plain form).

``rotary(x, cos, sin, start, heads, interleaved)`` is Eq. 2 (SPEC.md §5.1) for the t positions start ..
start + t - 1 of the tables, likewise one custom op and one ``RotaryEmbedding`` node; ``rope_op`` is the swap
of ``naive.rope`` for positions given as a slice (``export_forms.rope_slices``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import naive
from .functional import apply_rope


@torch.library.custom_op("infini_attention::attend_past", mutates_args=())
def attend_past(q: torch.Tensor, k_past: torch.Tensor, v_past: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float) -> torch.Tensor:
    """q (B, H, t, dk); k_past (B, Hkv, n, dk), v_past (B, Hkv, n, dv); k (B, Hkv, t, dk), v (B, Hkv, t, dv)
    -> (B, H, t, dv). H a multiple of Hkv: query head h reads key/value head h // (H / Hkv) (SPEC.md §3.2)."""
    keys, values = torch.cat((k_past, k), dim=2), torch.cat((v_past, v), dim=2)  # (B, Hkv, L, d)
    t, L = q.shape[2], keys.shape[2]
    mask = naive.visible(L - t, t, q.device)  # (t, L) bottom-right causal
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != keys.shape[1])


@attend_past.register_fake
def _(q, k_past, v_past, k, v, scale):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


@torch.library.custom_op("infini_attention::attend_past_values", mutates_args=())
def attend_past_values(q: torch.Tensor, k_past: torch.Tensor, v_past: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``attend_past`` and the values it attended to, v_past then v (B, Hkv, n + t, dv): the Attention op's
    ``present_value`` output, which it computes anyway and the decoding form keeps as the state's values."""
    return attend_past(q, k_past, v_past, k, v, scale), torch.cat((v_past, v), dim=2)


@attend_past_values.register_fake
def _(q, k_past, v_past, k, v, scale):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), v.new_empty((*v.shape[:2], v_past.shape[2] + v.shape[2],
                                                                   v.shape[3]))


def attention_op(q, k, v, scale: float, mask: torch.Tensor) -> torch.Tensor:
    """``naive.local_attention`` through ``attend_past``: q (B, t, H, dk), k (B, L, H', dk), v (B, L, H', dv)
    with the t queries at offsets L - t .. L - 1 (``mask`` = ``naive.visible(L - t, t)``, not read) -> (B, t, H, dv)."""
    n = k.shape[1] - q.shape[1]
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # (B, H', L, d)
    out = attend_past(q.transpose(1, 2), kt[:, :, :n], vt[:, :, :n], kt[:, :, n:], vt[:, :, n:], float(scale))
    return out.transpose(1, 2)  # (B, t, H, dv)


ATTENTION_OP = naive.SPEC.replace(local_attention=attention_op)


@torch.library.custom_op("infini_attention::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, heads: int,
           interleaved: bool) -> torch.Tensor:
    """x (B, t, heads, d) at offsets ``positions`` (B, t) (the same for every row); cos, sin (N, d/2) tables
    -> x rotated (B, t, heads, d)."""
    rows = positions[0]
    return apply_rope(x, cos[rows], sin[rows], "interleaved" if interleaved else "half")


@rotary.register_fake
def _(x, cos, sin, positions, heads, interleaved):
    return torch.empty_like(x)


def rope_op(a: torch.Tensor, positions, c) -> torch.Tensor:
    """``naive.rope`` through ``rotary``: a (B, T, n, dk), positions a slice of offsets (``rope_slices``). The
    position ids depend only on the sizes, so every layer's are the same nodes (the exporter merges them)."""
    naive.rope(a[:, :0], slice(0, 0), c)  # builds the tables naive.rope reads, in a's dtype, once
    cos, sin = naive._TABLES[(c.segment_len, c.d_key, c.rope_theta, a.dtype, a.device)]
    ids = torch.arange(positions.start, positions.stop, device=a.device).expand(a.shape[0], -1)  # (B, T)
    return rotary(a, cos, sin, ids, a.shape[2], c.rope_style == "interleaved")


@torch.library.custom_op("infini_attention::rotary_heads_first", mutates_args=())
def rotary_heads_first(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                       interleaved: bool) -> torch.Tensor:
    """``rotary`` for x in the state's layout (B, heads, t, d), the layout of ONNX RotaryEmbedding's 4-D input."""
    rows = positions[0]
    style = "interleaved" if interleaved else "half"
    return apply_rope(x.transpose(1, 2), cos[rows], sin[rows], style).transpose(1, 2)


@rotary_heads_first.register_fake
def _(x, cos, sin, positions, interleaved):
    return torch.empty_like(x)


def rope_heads_first(a: torch.Tensor, start, stop, c) -> torch.Tensor:
    """a (B, heads, T, dk) at segment offsets start .. stop - 1, rotated (SPEC.md §5.1)."""
    naive.rope(a[:, :, :0].transpose(1, 2), slice(0, 0), c)  # the tables naive.rope reads, once
    cos, sin = naive._TABLES[(c.segment_len, c.d_key, c.rope_theta, a.dtype, a.device)]
    ids = torch.arange(start, stop, device=a.device).expand(a.shape[0], -1)  # (B, T)
    return rotary_heads_first(a, cos, sin, ids, c.rope_style == "interleaved")

"""ONNX plumbing for the exporter (no math): the ``Attention`` translation of torch_impl's ``attend_past``,
and one file from the two traced forms.

A file holds one graph that picks a traced form by L = past_len + chunk (graph.py):
``If(L < N, inside, If(L == N, piece, chunk))``: *inside* for a call that stays in its segment (decoding:
no write, no padding), *piece* for one that ends exactly on a boundary (one write), *chunk* for anything
longer (every completed segment written, the rest left pending). All branches read the same inputs and
write the same outputs (SPEC.md §14.1), so a runtime sees one graph that takes any number of tokens; the
parameters are shared initializers of the outer graph, under their reference names.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..reference import io_spec

ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
        "int64": TensorProto.INT64}


def attend_past_onnx(q, k_past, v_past, k, v, scale: float):
    """torch_impl.attention_op.attend_past as one opset-23 Attention node: the pending keys/values enter as
    ``past_key``/``past_value``, which aligns ``is_causal``'s mask bottom-right (queries after the past)."""
    from onnxscript import opset23 as op

    y, _, _, _ = op.Attention(q, k, v, None, k_past, v_past, is_causal=1, scale=scale)
    return y


def attend_past_values_onnx(q, k_past, v_past, k, v, scale: float):
    """torch_impl.attention_op.attend_past_values: the same Attention node, its ``present_value`` returned too."""
    from onnxscript import opset23 as op

    y, _, present_value, _ = op.Attention(q, k, v, None, k_past, v_past, is_causal=1, scale=scale)
    return y, present_value


def rotary_onnx(x, cos, sin, positions, heads: int, interleaved: bool):
    """torch_impl.attention_op.rotary as one opset-23 RotaryEmbedding node: x (B, t, heads, d) seen as
    (B, t, heads*d) by reshapes that need no Shape node, position ids (B, t), cos/sin the (N, d/2) tables."""
    from onnxscript import opset23 as op

    flat = op.Reshape(x, op.Constant(value_ints=[0, 0, -1]))
    y = op.RotaryEmbedding(flat, cos, sin, positions, interleaved=int(interleaved), num_heads=heads)
    return op.Reshape(y, op.Constant(value_ints=[0, 0, heads, -1]))


def rotary_heads_first_onnx(x, cos, sin, positions, interleaved: bool):
    """torch_impl.attention_op.rotary_heads_first: x (B, heads, t, d) is RotaryEmbedding's own 4-D layout."""
    from onnxscript import opset23 as op

    return op.RotaryEmbedding(x, cos, sin, positions, interleaved=int(interleaved))


def keep_attention_present(model: onnx.ModelProto) -> None:
    """ONNX Runtime's Attention kernel refuses past inputs without ``present_key``/``present_value`` outputs,
    which the optimizer drops as unused: name them again (unconsumed outputs cost one concat per call)."""
    for node in all_nodes(model.graph):
        if node.op_type == "Attention" and len(node.input) >= 6 and node.input[4]:
            outs = list(node.output) + [""] * max(0, 3 - len(node.output))
            for i, what in ((1, "present_key"), (2, "present_value")):
                outs[i] = outs[i] or f"{node.name or node.output[0]}.{what}"
            node.output[:] = outs


def compose(forms: dict, config, dtype: str, state_dtype: str, params: set) -> onnx.ModelProto:
    """One model from the traced graphs ``forms`` ({"inside", "piece", "chunk"} -> ModelProto): inputs and
    outputs of io_spec, the branch chosen by L = past_len + chunk against N (module docstring).

    ``params``: the reference parameter names (initializers the graphs share by name and value)."""
    specs = io_spec.specs(config, dtype, state_dtype)
    ins, outs = [s for s in specs if s.direction == "in"], [s for s in specs if s.direction == "out"]
    outer = {s.name for s in ins}
    inits, branches = {}, {}
    for tag, model in forms.items():
        keep = outer | {i.name for i in model.graph.initializer if i.name in params}
        g = _renamed(model.graph, f"{tag}/", keep)
        for init in g.initializer:  # everything becomes an outer initializer; shared parameters once
            if init.name in inits and init.SerializeToString() != inits[init.name].SerializeToString():
                raise ValueError(f"initializer {init.name!r}: the traced graphs hold different values")
            inits.setdefault(init.name, init)
        del g.initializer[:]
        branches[tag] = _branch(tag, list(g.node), list(g.output), list(g.value_info), outs)
    first, key0 = ins[0].name, next(s.name for s in ins if s.layer == 0)
    last = helper.make_node("If", ["if/at_boundary"], [f"tail/{s.name}" for s in outs],
                            then_branch=branches["piece"], else_branch=branches["chunk"])
    tail = _branch("tail", [last], [helper.make_tensor_value_info(f"tail/{s.name}", ELEM[s.dtype], list(s.dims))
                                    for s in outs], [], outs)
    nodes = [
        helper.make_node("Shape", [first], ["if/chunk"], start=1, end=2),
        helper.make_node("Shape", [key0], ["if/past_len"], start=2, end=3),
        helper.make_node("Add", ["if/chunk", "if/past_len"], ["if/L"]),
        helper.make_node("Less", ["if/L", "if/N"], ["if/inside"]),
        helper.make_node("Equal", ["if/L", "if/N"], ["if/at_boundary"]),
        helper.make_node("If", ["if/inside"], [s.name for s in outs], then_branch=branches["inside"],
                         else_branch=tail),
    ]
    n_const = helper.make_tensor("if/N", TensorProto.INT64, [1], [config.segment_len])
    graph = helper.make_graph(nodes, "infini_attention", [_value_info(s.name, s) for s in ins],
                              [_value_info(s.name, s) for s in outs], [n_const, *inits.values()])
    opsets = {}
    for model in forms.values():
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
    some = next(iter(forms.values()))
    out.ir_version = max(m.ir_version for m in forms.values())
    out.producer_name, out.producer_version = some.producer_name, some.producer_version
    return out


def _branch(tag: str, nodes: list, outputs: list, value_info: list, outs: list) -> onnx.GraphProto:
    """An If branch computing ``outputs`` (prefixed names) and returning them as ``{tag}/{spec name}``."""
    body = helper.make_graph(nodes, f"{tag}_branch", [], [_value_info(f"{tag}/{s.name}", s) for s in outs])
    body.node.extend(helper.make_node("Identity", [o.name], [f"{tag}/{s.name}"])
                     for o, s in zip(outputs, outs) if o.name != f"{tag}/{s.name}")
    body.value_info.extend(value_info)
    return body


def _value_info(name: str, spec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ELEM[spec.dtype], list(spec.dims))


def _renamed(graph: onnx.GraphProto, prefix: str, keep: set) -> onnx.GraphProto:
    """A copy of ``graph`` with every value and node name (subgraphs included) prefixed, except ``keep``: the
    two branches then never clash, and still read the outer inputs and shared parameters by name."""
    g = onnx.GraphProto()
    g.CopyFrom(graph)

    def name(n: str) -> str:
        return n if not n or n in keep else prefix + n

    def walk(graph_: onnx.GraphProto) -> None:
        for seq in (graph_.input, graph_.output, graph_.value_info):
            for v in seq:
                v.name = name(v.name)
        for init in graph_.initializer:
            init.name = name(init.name)
        for node in graph_.node:
            node.input[:] = [name(n) for n in node.input]
            node.output[:] = [name(n) for n in node.output]
            node.name = prefix + node.name if node.name else ""
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    walk(sub)

    walk(g)
    return g


def all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of its subgraphs (Scan bodies, If branches), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from all_nodes(g)


def node_counts(model: onnx.ModelProto) -> dict:
    """Nodes of each form's branch (its subgraphs, e.g. the delta rule's Scan body, included) and in all."""
    out = {"total": sum(1 for _ in all_nodes(model.graph))}
    for node in all_nodes(model.graph):
        for attr in node.attribute if node.op_type == "If" else ():
            if attr.g.name != "tail_branch":
                out[attr.g.name.replace("_branch", "")] = sum(1 for _ in all_nodes(attr.g))
    return out


def inside_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict] | tuple[None, dict]:
    """The *inside* branch of a composed file as a model of its own, or (None, {}) for a file not shaped by
    `compose`. A runtime that knows a call stays inside its segment (decoding) runs it without the If: ONNX
    Runtime spends more on an If and its subgraph's feeds than on a small node.

    Same inputs and initializers; outputs that the branch passes through unchanged (M, z and past_segments:
    such a call writes nothing, SPEC.md §7) are left out, returned as {output: input} for the runtime to carry
    over itself (their Identity nodes and values cost more than the rest of some layers)."""
    top = [n for n in model.graph.node if n.op_type == "If"]
    branch = next((a.g for a in top[0].attribute if a.name == "then_branch"), None) if len(top) == 1 else None
    if branch is None or branch.name != "inside_branch" or len(branch.output) != len(model.graph.output):
        return None, {}
    to_outer = {o.name: v.name for o, v in zip(branch.output, model.graph.output)}  # "inside/logits" -> "logits"
    inputs = {v.name for v in model.graph.input}
    passed = {to_outer[n.output[0]]: n.input[0] for n in branch.node
              if n.op_type == "Identity" and n.input[0] in inputs and n.output[0] in to_outer}
    nodes = []
    for node in branch.node:
        if node.op_type == "Identity" and to_outer.get(node.output[0]) in passed:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.output[:] = [to_outer.get(n, n) for n in copy.output]
        copy.input[:] = [to_outer.get(n, n) for n in copy.input]
        nodes.append(copy)
    used = {n for node in all_nodes(helper.make_graph(nodes, "used", [], [])) for n in node.input}
    graph = helper.make_graph(nodes, "infini_attention_inside", list(model.graph.input),
                              [v for v in model.graph.output if v.name not in passed],
                              [i for i in model.graph.initializer if i.name in used],
                              value_info=[v for v in branch.value_info if v.name not in to_outer])
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out, passed

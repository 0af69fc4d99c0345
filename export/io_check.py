"""The exported graph's inputs and outputs against the table of SPEC.md §14.1 (reference/io_spec.py): names and
order, dtypes, static sizes, and that every dim the spec makes symbolic is symbolic (an exporter can silently
specialise a dynamic dim to the example's size)."""
from __future__ import annotations

import onnx

from ..reference import io_spec
from .compose import ELEM


def check_io(model: onnx.ModelProto, config, dtype: str = "float32", state_dtype: str = "float32",
             table=io_spec.specs) -> list[str]:
    """Differences between the graph's inputs/outputs and io_spec.py (empty when they agree); ``table``:
    io_spec.specs, or io_spec.ragged_specs for the many-streams export."""
    elem = ELEM
    graph = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    order = [v.name for v in model.graph.input] + [v.name for v in model.graph.output]
    specs = table(config, dtype, state_dtype)
    problems = [] if order == [s.name for s in specs] else [f"names/order: expected {[s.name for s in specs]}, "
                                                            f"got {order}"]
    for s in specs:
        if s.name not in graph:
            continue
        t = graph[s.name].type.tensor_type
        if t.elem_type != elem[s.dtype]:
            problems.append(f"{s.name}: expected dtype {s.dtype}, got {onnx.TensorProto.DataType.Name(t.elem_type)}")
        dims = list(t.shape.dim)
        if len(dims) != len(s.dims):
            problems.append(f"{s.name}: expected rank {len(s.dims)} {s.dims}, got rank {len(dims)}")
            continue
        for axis, (want, got) in enumerate(zip(s.dims, dims)):
            if isinstance(want, str) and (got.HasField("dim_value") or got.dim_param != want):
                what = f"static {got.dim_value}" if got.HasField("dim_value") else repr(got.dim_param)
                problems.append(f"{s.name} dim {axis}: expected symbolic {want!r}, got {what} "
                                "(the exporter specialised a dynamic dim)")
            elif not isinstance(want, str) and (not got.HasField("dim_value") or got.dim_value != want):
                problems.append(f"{s.name} dim {axis}: expected {want}, got {got.dim_param or got.dim_value}")
    return problems

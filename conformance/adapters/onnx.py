"""Adapter for ONNX files (``--impl path/model.onnx``), run through ONNX Runtime on the CPU provider.

The file must follow the project's ONNX interchange format (SPEC.md §14.1, ``reference/io_spec.py``):
a single layer (metadata ``infini_attention.kind`` = "layer") whose config is the JSON in
``infini_attention.config``, inputs ``x``, ``past_segments``, ``past_key_values.0.key|value``,
``past_memory.0.M|z`` and the matching ``y``/``present*`` outputs, one segment piece per call
(``past_len + chunk <= segment_len``: this adapter cuts calls into pieces, SPEC.md §4.3).

The config is fixed by the file (``fixed_config``); the parameters are not: the suite's drawn
parameters replace the initializers named ``wq``, ``wk``, ``wv``, ``wo``, ``beta`` (or the
names the ``infini_attention.aliases`` metadata maps them to) for each example. A file whose
weights are not reachable by those names is a usage error.
"""
from __future__ import annotations

import json

import numpy as np

from ...reference import InfiniConfig, pieces
from ...reference.io_spec import METADATA_KEYS
from ..contract import NotSupported, UsageError

PARAMS = ("wq", "wk", "wv", "wo", "beta")
X, SEGMENTS = "x", "past_segments"
STATE_IN = ("past_key_values.0.key", "past_key_values.0.value", "past_memory.0.M", "past_memory.0.z")


class OnnxState:
    """The graph's state arrays; M and z are the canonical state (SPEC.md §4.2)."""

    def __init__(self, arrays: dict):
        self.arrays = arrays

    @property
    def M(self):
        return self.arrays["past_memory.0.M"]

    @property
    def z(self):
        return self.arrays["past_memory.0.z"]


class OnnxImpl:
    def __init__(self, model, config: InfiniConfig, compute_dtype: str, init_names: dict):
        self.model, self.config, self.compute_dtype, self.init_names = model, config, compute_dtype, init_names
        self._params, self._sess = None, None

    def session(self, params):
        import onnx.numpy_helper
        import onnxruntime as ort

        if params is not self._params:  # the suite hands the same dict to every call of a stream
            model = type(self.model)()
            model.CopyFrom(self.model)
            by_name = {init.name: init for init in model.graph.initializer}
            for name, init_name in self.init_names.items():
                dt = np.float32 if name == "beta" else np.dtype(self.compute_dtype)
                by_name[init_name].CopyFrom(onnx.numpy_helper.from_array(np.asarray(params[name], dt), init_name))
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.intra_op_num_threads = 1
            self._sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            self._params = params
        return self._sess

    def forward(self, params, x, state=None):
        c = self.config
        sess = self.session(params)
        x = np.asarray(x, dtype=self.compute_dtype)
        B, T = x.shape[0], x.shape[1]
        if state is None:
            state = OnnxState({
                SEGMENTS: np.zeros((), np.int64),
                STATE_IN[0]: np.zeros((B, c.n_kv_heads, 0, c.d_key), np.float32),
                STATE_IN[1]: np.zeros((B, c.n_kv_heads, 0, c.d_value), np.float32),
                STATE_IN[2]: np.zeros((B, c.n_kv_heads, c.d_key, c.d_value), np.float32),
                STATE_IN[3]: np.zeros((B, c.n_kv_heads, c.d_key), np.float32)})
        arrays, ys = dict(state.arrays), []
        names = [o.name for o in sess.get_outputs()]
        for a, b in pieces(arrays[STATE_IN[0]].shape[2], T, c.segment_len):  # one segment piece per ONNX call
            out = dict(zip(names, sess.run(None, {X: np.ascontiguousarray(x[:, a:b]), **arrays})))
            ys.append(out["y"])
            arrays = {SEGMENTS: out["present_segments"], STATE_IN[0]: out["present.0.key"],
                      STATE_IN[1]: out["present.0.value"], STATE_IN[2]: out["present_memory.0.M"],
                      STATE_IN[3]: out["present_memory.0.z"]}
        y = np.concatenate(ys, axis=1) if ys else np.zeros((B, 0, c.d_model), self.compute_dtype)
        return y, OnnxState(arrays)


def factory_for(path: str):
    """``make(config, dtype)`` for one ONNX file, declaring its fixed config and capabilities."""
    import onnx

    try:
        model = onnx.load(path)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"--impl {path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    keys = METADATA_KEYS
    meta = {p.key: p.value for p in model.metadata_props}
    if keys["config"] not in meta:
        raise UsageError(f"--impl {path}: no {keys['config']!r} metadata: export it with `infini export --kind layer`"
                         f" or add the layer's config JSON (SPEC.md §2 fields) under that key")
    data = json.loads(meta[keys["config"]])
    if meta.get(keys["kind"], "layer") != "layer" or "attn" in data:
        raise UsageError(f"--impl {path}: an LM export; the suite checks one layer: export with --kind layer")
    config = InfiniConfig.from_dict(data)
    dtype = meta.get(keys["compute_dtype"], "float32")
    aliases = json.loads(meta.get(keys["aliases"], "{}") or "{}")
    inits = {i.name for i in model.graph.initializer}
    names = {p: (p if p in inits else aliases.get(p)) for p in PARAMS}
    missing = [p for p, n in names.items() if n not in inits]
    if missing:
        raise UsageError(f"--impl {path}: initializers {missing} not found (expected initializers named "
                         f"{list(PARAMS)}, or an {keys['aliases']!r} metadata map); the suite substitutes "
                         f"its own parameters through them")
    inputs = [i.name for i in model.graph.input]
    expected = [X, SEGMENTS, *STATE_IN]
    if inputs[:len(expected)] != expected:
        raise UsageError(f"--impl {path}: graph inputs {inputs}, expected {expected} (SPEC.md §14.1)")

    features = {"delta": config.update == "delta", "gqa": config.n_kv_heads < config.n_heads,
                "rope": config.rope_theta is not None}
    caps = {dtype, "chunked", "canonical_state"} | {name for name, on in features.items() if on}

    def make(cfg: InfiniConfig, dtype: str = dtype) -> OnnxImpl:
        if cfg != config:
            raise NotSupported("the ONNX file is exported for one config only")
        return OnnxImpl(model, config, dtype, names)

    make.capabilities = caps
    make.fixed_config = config
    return make

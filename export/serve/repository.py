"""A Triton model repository from an exported model (`infini serve triton MODEL.onnx --repository DIR`).

    DIR/
      .infini-serve.json            marks the directory as ours (a later run may rewrite it; others are refused)
      models/                       the repository tritonserver runs (--model-repository DIR/models)
        infini/config.pbtxt         Python backend, sequence batcher (oldest; START, END, CORRID; idle timeout)
        infini/1/model.py           export/serve/triton_model.py: many streams per ORT call, state kept, spilled
        infini/1/python_path.txt    this Python environment's site dirs (the stub's Python imports the project)
        infini/1/model.ragged.onnx  the many-streams export (SPEC.md §14.3) of MODEL.onnx
      onnxruntime_backend/infini/   a second repository for Triton's ONNX Runtime backend with implicit state
                                    (sequence_batching.state): schema-checked, NOT run here (not in the wheel)

Both configs are parsed with Triton's own ModelConfig protobuf (tritonclient) before anything is written.
"""
from __future__ import annotations

import json
import shutil
import sysconfig
import tempfile
from pathlib import Path

from ...reference import io_spec
from ...reference.errors import UsageError
from ..ragged_graph import model_config, write_ragged

MODEL_NAME = "infini"
MARKER = ".infini-serve.json"
MARKER_FORMAT = "infini-serve-repository/1"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64"}


def check_repository_dir(path) -> Path:
    """The repository directory: absent, empty, or one this command wrote (its marker file); never another's."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--repository: expected a directory, got the file {str(path)!r}")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise UsageError(f"--repository: expected a new or empty directory, or one written by `infini serve triton`; "
                         f"{str(path)!r} holds other files (refusing to overwrite them)")
    return path


def check_spill_dir(path) -> Path | None:
    if path is None:
        return None
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--spill-dir: expected a directory, got the file {str(path)!r}")
    try:  # created (it is asked for) and probed with a real file: permissions alone miss read-only mounts
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"--spill-dir: expected a writable directory, {str(path)!r} is not "
                         f"({exc.strerror or type(exc).__name__})") from None
    return path


def check_stateful_model(path) -> tuple:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model: expected an .onnx file exported by `infini export`, got {str(path)!r}")
    try:
        fmt, config, meta = model_config(path)
    except Exception as exc:  # noqa: BLE001 - not an ONNX file at all
        raise UsageError(f"model: expected an ONNX file exported by `infini export`, cannot read {str(path)!r} "
                         f"({type(exc).__name__})") from None
    if fmt != io_spec.FORMAT:
        raise UsageError(f"model: expected a stateful export of `infini export` (metadata format {io_spec.FORMAT!r}), "
                         f"got {fmt!r} in {str(path)!r}")
    if config.kind not in ("lm", "layer"):
        raise UsageError(f"model: expected an export of the spec's LM or layer (kind 'lm' or 'layer'), got kind "
                         f"{config.kind!r} in {str(path)!r}: a model exported with --module has no many-streams "
                         f"form yet")
    return config, meta


def python_config(config, meta: dict, *, max_streams: int, max_chunk: int, idle_s: float, spill_dir,
                  queue_delay_us: int = 500, threads: int = 0) -> str:
    """config.pbtxt of the Python-backend model."""
    first, out = ("input_ids", "logits") if config.kind == "lm" else ("x", "y")
    dt = meta[io_spec.METADATA_KEYS["compute_dtype"]]
    in_type, in_dims = ("TYPE_INT64", "[ -1 ]") if config.kind == "lm" else (TRITON_DTYPES[dt], f"[ -1, {config.d_model} ]")
    width = config.vocab_size if config.kind == "lm" else config.d_model
    out_type = "TYPE_FP32" if config.kind == "lm" else TRITON_DTYPES[dt]
    params = {"model_file": "model.ragged.onnx", "max_chunk": str(max_chunk), "spill_dir": str(spill_dir or ""),
              "intra_op_threads": str(threads)}
    return f'''name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {max_streams}
input [
  {{ name: "{first}" data_type: {in_type} dims: {in_dims} allow_ragged_batch: true }},
  {{ name: "RESUME" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [ {{ name: "{out}" data_type: {out_type} dims: [ -1, {width} ] }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {int(idle_s * 1e6)}
  oldest {{ max_candidate_sequences: {max_streams} max_queue_delay_microseconds: {queue_delay_us} }}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters [
''' + ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()) + "\n]\n"


def onnxruntime_config(config, meta: dict, *, max_streams: int, idle_s: float) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend running the ragged graph with implicit state: every state
    input/output pair of RAGGED_TABLE is a sequence_batching.state (zeros at START). The client sends the
    (padded) chunk and chunk_lengths, at most the rest of its segment per request (SPEC.md §14.3)."""
    dt, sdt = meta[io_spec.METADATA_KEYS["compute_dtype"]], meta.get(io_spec.METADATA_KEYS["state_dtype"], "float32")
    specs = io_spec.ragged_specs(config, dt, sdt)
    ins = {s.name: s for s in specs if s.direction == "in"}
    outs = [s for s in specs if s.direction == "out"]
    first, result = specs[0], outs[0]

    def dims(s):
        return "[ " + ", ".join("-1" if d == "chunk" else str(d) for d in s.dims[1:]) + " ]"  # batch dim implied

    states = []
    for o in outs[1:]:
        i = ins[o.name.replace("present_memory", "past_memory").replace("present.", "past_key_values.")
                .replace("present_", "past_")]
        states.append(f'    {{ input_name: "{i.name}" output_name: "{o.name}" data_type: {TRITON_DTYPES[i.dtype]} '
                      f'dims: {dims(i)} initial_state: {{ data_type: {TRITON_DTYPES[i.dtype]} dims: {dims(i)} '
                      f'zero_data: true name: "zeros" }} }}')
    return f'''name: "{MODEL_NAME}"
backend: "onnxruntime"
max_batch_size: {max_streams}
input [
  {{ name: "{first.name}" data_type: {TRITON_DTYPES.get(first.dtype, "TYPE_FP32")} dims: {dims(first)} }},
  {{ name: "chunk_lengths" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [ {{ name: "{result.name}" data_type: {TRITON_DTYPES[result.dtype]} dims: {dims(result)} }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {int(idle_s * 1e6)}
  oldest {{ max_candidate_sequences: {max_streams} }}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
  state [
''' + ",\n".join(states) + "\n  ]\n}\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n"


def parse_config(text: str):
    """The ModelConfig message of ``text``, parsed by Triton's own schema (tritonclient's model_config_pb2)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UsageError(f"serve: expected tritonclient (pip install 'infini-attention[serve]'), {exc}") from None
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def write_repository(model, directory, *, spill_dir=None, max_streams: int = 64, max_chunk: int = 4096,
                     idle_s: float = 600.0, threads: int = 0) -> Path:
    """Write the repository (module docstring) for the stateful export ``model``; all checks come first."""
    config, meta = check_stateful_model(model)
    directory = check_repository_dir(directory)
    spill = check_spill_dir(spill_dir)
    for name, value in (("--max-streams", max_streams), ("--max-chunk", max_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name}: expected an integer >= 1, got {value!r}")
    if not idle_s > 0:
        raise UsageError(f"--idle-timeout: expected seconds > 0, got {idle_s!r}")
    py = python_config(config, meta, max_streams=max_streams, max_chunk=max_chunk, idle_s=idle_s, spill_dir=spill,
                       threads=threads)
    ort_cfg = onnxruntime_config(config, meta, max_streams=max_streams, idle_s=idle_s)
    parse_config(py), parse_config(ort_cfg)  # Triton's schema, before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    marker = {"format": MARKER_FORMAT, "model": str(Path(model).resolve()),
              "model_id": meta[io_spec.METADATA_KEYS["model_id"]], "spill_dir": str(spill or "")}
    (directory / MARKER).write_text(json.dumps(marker))  # first: a repository cut short is still known as ours
    version = directory / "models" / MODEL_NAME / "1"
    version.mkdir(parents=True, exist_ok=True)
    write_ragged(model, version / "model.ragged.onnx")
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), version / "model.py")
    site_dirs = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (version / "python_path.txt").write_text("\n".join(site_dirs) + "\n")  # this environment, for the stub
    (directory / "models" / MODEL_NAME / "config.pbtxt").write_text(py)
    ort_dir = directory / "onnxruntime_backend" / MODEL_NAME
    (ort_dir / "1").mkdir(parents=True, exist_ok=True)
    (ort_dir / "config.pbtxt").write_text(ort_cfg)
    (ort_dir / "README").write_text("For Triton's ONNX Runtime backend (implicit state, sequence_batching.state): put "
                                    "../../models/infini/1/model.ragged.onnx here as 1/model.onnx. Checked against Triton's "
                                    "model-config schema only; not run by this project (its wheel has no such backend).\n")
    return directory

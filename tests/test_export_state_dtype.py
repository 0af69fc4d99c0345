"""`infini export --state-dtype float64` (issue 13, export side): M and z cross the graph in float64, so the
memory keeps absorbing writes where a float32 state stops (SPEC.md §11). The scale is constructed directly,
as in tests/test_memory_precision.py: a state with z ~ 4e9 (float32 ulp 256), streamed segment by segment."""
import numpy as np
import onnx
import pytest

from infini_attention import reference as R
from infini_attention.export import METADATA_KEYS, InfiniSession, export
from infini_attention.export.exporter import rounded_params
from infini_attention.export.io_check import check_io
from infini_attention.reference.cli import main

C = R.InfiniConfig(d_model=4, n_heads=2, n_kv_heads=1, d_key=2, d_value=2, segment_len=4, update="linear")
Z0, M0, SEGMENTS = 4e9, 1e7, 10**8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("state_dtype")
    params = R.init_params(C, 3)
    for state_dtype in ("float32", "float64"):
        export(C, params, d / f"{state_dtype}.onnx", state_dtype=state_dtype)
    return d, params


def _stream(path, params):
    """50 segments, one per call, from a state with a large z; -> (session state, reference state)."""
    sess = InfiniSession(path, provider="cpu")
    mdt = np.dtype(sess.state_dtype)
    x = np.random.default_rng(0).standard_normal((1, 50 * C.segment_len, C.d_model)).astype(np.float32)
    sess.set_state({"past_segments": np.array(SEGMENTS, np.int64),
                    "past_key_values.0.key": np.zeros((1, 1, 0, 2), np.float32),
                    "past_key_values.0.value": np.zeros((1, 1, 0, 2), np.float32),
                    "past_memory.0.M": np.full((1, 1, 2, 2), M0, mdt), "past_memory.0.z": np.full((1, 1, 2), Z0, mdt)})
    for s in range(50):
        sess.feed(x[:, s * C.segment_len:(s + 1) * C.segment_len], outputs="none")
    start = R.InfiniState(M=np.full((1, 1, 2, 2), M0), z=np.full((1, 1, 2), Z0), k=np.zeros((1, 1, 0, 2)),
                          v=np.zeros((1, 1, 0, 2)), segments=SEGMENTS)
    _, ref = R.forward(C, rounded_params(params, "float32"), x.astype(np.float64), start)
    return sess.state(), ref


def test_float64_state_keeps_tracking_the_reference(files):
    d, params = files
    got, ref = _stream(d / "float64.onnx", params)
    assert got["past_memory.0.z"].dtype == np.float64 and got["past_memory.0.M"].dtype == np.float64
    assert np.all(ref.z - Z0 > 100)  # the reference grew by hundreds
    np.testing.assert_allclose(got["past_memory.0.z"] - Z0, ref.z - Z0, rtol=1e-5)
    np.testing.assert_allclose(got["past_memory.0.M"] - M0, ref.M - M0, rtol=1e-5, atol=1e-3)
    assert int(got["past_segments"]) == SEGMENTS + 50


def test_float32_state_stops_absorbing(files):
    """The failure the option exists for: every write rounds away in a float32 z of 4e9."""
    d, params = files
    got, ref = _stream(d / "float32.onnx", params)
    assert got["past_memory.0.z"].dtype == np.float32
    assert np.all(ref.z - Z0 > 100)
    assert np.all(got["past_memory.0.z"].astype(np.float64) - Z0 == 0)


def test_float64_file_declares_its_state_dtype(files):
    d, _ = files
    model = onnx.load(str(d / "float64.onnx"))
    assert check_io(model, C, "float32", "float64") == []
    assert check_io(model, C) != []  # it is not the float32-state contract
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[METADATA_KEYS["state_dtype"]] == "float64"
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert types["past_memory.0.M"] == types["present_memory.0.z"] == onnx.TensorProto.DOUBLE
    assert types["past_key_values.0.key"] == onnx.TensorProto.FLOAT  # pending keys stay float32


def test_float32_state_is_refused_by_a_float64_model(files):
    d, _ = files
    sess = InfiniSession(d / "float64.onnx", provider="cpu")
    good = sess.state()
    with pytest.raises(ValueError, match=r"state 'past_memory.0.M': expected float64 \(1, 1, 2, 2\) for this model"
                                         r".*got float32 \(1, 1, 2, 2\)"):
        sess.set_state(dict(good, **{"past_memory.0.M": good["past_memory.0.M"].astype(np.float32)}))


def test_cli_state_dtype_option(tmp_path, capsys):
    out = tmp_path / "t.onnx"
    assert main(["export", "--preset", "tiny", "--kind", "layer", "--state-dtype", "float64", "-o", str(out),
                 "--show-io"]) == 0
    text = capsys.readouterr().out
    assert "state float64" in text and "| `present_memory.0.z` | out | (batch, 2, 8) | float64 |" in text
    assert InfiniSession(out, provider="cpu").state_dtype == "float64"
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--preset", "tiny", "--state-dtype", "float16", "-o", str(tmp_path / "x.onnx")])
    assert exit_.value.code == 2 and "--state-dtype: invalid choice: 'float16'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()

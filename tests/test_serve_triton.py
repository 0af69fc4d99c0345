"""The real tritonserver (nvidia-pytriton's binary) over `infini serve triton`'s repository, on loopback ports
chosen at run time, every server killed in teardown: concurrent streams equal one InfiniSession per stream; a
stream moves between server instances through the spill directory; kill -9 loses no committed state; bad
requests get Triton errors naming the problem while the other streams go on."""
import json
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest

from infini_attention.export import InfiniSession
from infini_attention.reference.config import ModelConfig
from infini_attention.reference.io_spec import METADATA_KEYS
from infini_attention.reference.tolerances import assert_close

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient not installed (the serve extra)")
server_mod = pytest.importorskip("infini_attention.export.serve.server")
try:
    server_mod.triton_root()
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"tritonserver not available: {exc}", allow_module_level=True)
from infini_attention.export.serve.repository import write_repository  # noqa: E402
from infini_attention.export.serve.server import TritonServer  # noqa: E402

MAX_CHUNK = 16
START_TIMEOUT = 90  # seconds; the server is ready in ~3 s here


@pytest.fixture(scope="module")
def repo(served_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    write_repository(served_lm[2], root / "repo", spill_dir=root / "spill", max_streams=8, max_chunk=MAX_CHUNK,
                     idle_s=60)
    return root


def _server(repo, name):
    try:
        return TritonServer(repo / "repo", repo / name).start(START_TIMEOUT)
    except RuntimeError as exc:
        pytest.skip(f"tritonserver could not start here: {exc}")


@pytest.fixture(scope="module")
def server(repo):
    srv = _server(repo, "a")
    yield srv
    srv.kill()


def _infer(srv, corrid, ids, start=False, end=False, resume=False, dtype="INT64", arr=None):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{srv.http_port}", network_timeout=30)
    arr = np.asarray([ids], np.int64) if arr is None else arr
    inputs = [httpclient.InferInput("input_ids", list(arr.shape), dtype)]
    inputs[0].set_data_from_numpy(arr)
    if resume:
        inputs.append(httpclient.InferInput("RESUME", [1, 1], "INT32"))
        inputs[1].set_data_from_numpy(np.array([[1]], np.int32))
    out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
    result = client.infer("infini", inputs, outputs=out, sequence_id=corrid, sequence_start=start,
                          sequence_end=end)
    return result.as_numpy("logits")[0]


def _tokens(config, s, T):
    return np.random.default_rng(500 + s).integers(0, config.vocab_size, T)


def _alone(path, ids):
    return InfiniSession(path, provider="cpu").feed(np.asarray(ids)[None])[0]


def test_concurrent_streams_equal_one_session_each(served_lm, server):
    """8 streams at once from 8 threads, each in its own chunks; the server batches different streams into one
    ORT call of the ragged graph. float32 tolerance (§11): the stateful and the ragged graphs sum in other orders."""
    config, path = served_lm[0], served_lm[2]
    streams = {100 + s: _tokens(config, s, T) for s, T in enumerate([1, 5, 9, 14, 3, 20, 7, 11])}
    got, errors = {}, []

    def run(corrid, ids):
        try:
            rng, outs, at = np.random.default_rng(corrid), [], 0
            while at < len(ids):
                t = int(rng.integers(1, 6))
                outs.append(_infer(server, corrid, ids[at:at + t], start=at == 0, end=at + t >= len(ids)))
                at += t
            got[corrid] = np.concatenate(outs)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in streams.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for corrid, ids in streams.items():
        assert_close(f"stream {corrid}", got[corrid], _alone(path, ids), "float32")


def test_stream_continues_on_a_second_instance(served_lm, server, repo):
    config, path = served_lm[0], served_lm[2]
    ids = _tokens(config, 40, 10)
    first = _infer(server, 7, ids[:6], start=True)
    other = _server(repo, "b")  # a second instance sharing the spill directory
    try:
        rest = _infer(other, 7, ids[6:], start=True, resume=True, end=True)
    finally:
        other.kill()
    assert_close("stream across instances", np.concatenate([first, rest]), _alone(path, ids), "float32")


def test_kill_9_mid_stream_loses_no_committed_state(served_lm, repo):
    config, path = served_lm[0], served_lm[2]
    ids = _tokens(config, 41, 12)
    srv = _server(repo, "c")
    try:
        first = _infer(srv, 8, ids[:4], start=True)
        second = _infer(srv, 8, ids[4:7])
    finally:
        srv.kill()  # SIGKILL: nothing gets flushed at exit
    srv = _server(repo, "c")
    try:
        rest = _infer(srv, 8, ids[7:], start=True, resume=True, end=True)
    finally:
        srv.kill()
    assert_close("stream across kill -9", np.concatenate([first, second, rest]), _alone(path, ids), "float32")


@pytest.mark.parametrize("bad, expected", [
    (lambda s: _infer(s, 9001, [1, 2]), "must specify the START flag"),  # Triton's own check
    (lambda s: _infer(s, 9002, None, start=True, dtype="FP32", arr=np.ones((1, 2), np.float32)), "INT64"),
    (lambda s: _infer(s, 9003, None, start=True, arr=np.ones((1, 2, 2), np.int64)), "input_ids"),
    (lambda s: _infer(s, 9004, list(range(MAX_CHUNK + 1)), start=True), f"max_chunk={MAX_CHUNK}"),
    (lambda s: _infer(s, 9005, [1, 99], start=True), "expected token ids in [0, 13)"),
    (lambda s: _infer(s, 9006, [1], start=True, resume=True), "RESUME expected a spilled state"),
])
def test_bad_requests_get_errors_and_others_go_on(served_lm, server, bad, expected):
    config, path = served_lm[0], served_lm[2]
    ids = _tokens(config, 42, 6)
    before = _infer(server, 300, ids[:3], start=True)
    with pytest.raises(Exception) as err:
        bad(server)
    assert expected in str(err.value), str(err.value)
    after = _infer(server, 300, ids[3:], end=True)
    assert_close("the other stream", np.concatenate([before, after]), _alone(path, ids), "float32")


def test_cli_refuses_bad_input_before_starting(served_lm, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = [sys.executable, "-m", "infini_attention.reference.cli", "serve", "triton", str(served_lm[2])]
        foreign = tmp_path / "foreign.onnx"  # a --module export (kind "model"): its metadata, the LM's graph
        model = onnx.load(str(served_lm[2]))
        config = served_lm[0]
        meta = {p.key: p.value for p in model.metadata_props}
        meta[METADATA_KEYS["kind"]] = "model"
        meta[METADATA_KEYS["config"]] = json.dumps(ModelConfig(config.layer_configs, config.vocab_size,
                                                               config.vocab_size, True, "pkg:build").to_dict())
        onnx.helper.set_model_props(model, meta)
        onnx.save(model, str(foreign))
        (tmp_path / "theirs").mkdir()
        (tmp_path / "theirs" / "keep.txt").write_text("not ours")
        cases = [([str(served_lm[3]), "--repository", str(tmp_path / "r1")], "expected a stateful export"),
                 ([str(foreign), "--repository", str(tmp_path / "r4")], "exported with --module has no many-streams"),
                 (["--repository", str(tmp_path / "theirs")], "refusing to overwrite"),
                 (["--repository", str(tmp_path / "r2"), "--start", "--http-port", str(port)], f"{port} is in use"),
                 (["--repository", str(tmp_path / "r3"), "--spill-dir", "/proc/none"], "--spill-dir: expected a "
                                                                                        "writable directory")]
        for extra, expected in cases:
            cmd = run[:-1] + extra if extra[0].endswith(".onnx") else run + extra
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert p.returncode == 2 and expected in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert (tmp_path / "theirs" / "keep.txt").read_text() == "not ours"
    assert not any((tmp_path / r).exists() for r in ("r2", "r3", "r4"))


def test_idle_stream_is_freed(served_lm, tmp_path):
    """A stream idle past the timeout is freed (Triton forgets the sequence, the model its state); with a spill
    directory it can still be taken up again with START + RESUME."""
    import time

    config, path = served_lm[0], served_lm[2]
    write_repository(path, tmp_path / "repo", spill_dir=tmp_path / "spill", max_streams=4, idle_s=1)
    srv = _server(tmp_path, "idle")
    try:
        ids = _tokens(config, 43, 6)
        first = _infer(srv, 11, ids[:3], start=True)
        time.sleep(3)  # > 1 s idle; Triton checks idle sequences about once per timeout
        with pytest.raises(Exception) as err:
            _infer(srv, 11, ids[3:])
        assert "must specify the START flag" in str(err.value)
        rest = _infer(srv, 11, ids[3:], start=True, resume=True, end=True)
    finally:
        srv.kill()
    assert_close("stream resumed after idling", np.concatenate([first, rest]), _alone(path, ids), "float32")

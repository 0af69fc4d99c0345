"""Serving many streams: Triton (`infini serve triton`) and StreamPool against one session running them in turn.

    python benchmarks/bench_serve.py                         # tiny preset, 1 .. 64 streams
    python benchmarks/bench_serve.py --preset small --streams 1 8 64 --steps 16

For each number S of concurrent streams, every stream is prefilled with a prompt, then decodes ``--steps``
tokens greedily, one token per request:
  triton      S client threads against one tritonserver (python backend: the sequence batcher hands the model
              the requests of several streams, run as one ORT call of the many-streams graph); latency is the
              client's round trip per decode step (HTTP on loopback).
  pool        the same S streams in this process through StreamPool, one feed per step for all of them
              (the batching without the server); latency is the step's wall time (all S streams advance).
  sequential  the baseline: one InfiniSession runs the S streams one after another (state saved and restored
              between streams is not timed), one feed per token; latency per token.
tokens/s counts decode tokens only. Memory per stream: the state's bytes (session layout, and the ragged
graph's N-slot layout), and the tritonserver processes' RSS growth per stream at the largest S.
Runs side by side in one process, on whatever else the machine runs: figures are ratios first.
Figures are printed and written to artifacts/bench/bench_serve-PRESET.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "artifacts" / "bench"


def _export(preset: str) -> Path:
    from infini_attention.export import export, preset_config, preset_params

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{preset}-lm-serve.onnx"
    config = preset_config(preset, "lm")
    export(config, preset_params(config, 0), path)
    return path


def _stats(latencies: list, tokens: int, seconds: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"tokens_per_s": tokens / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def sequential(path, prompts, steps) -> dict:
    from infini_attention.export import InfiniSession

    sess = InfiniSession(path, provider="cpu")
    lat, busy = [], 0.0
    for prompt in prompts:
        sess.reset(1)
        logits = sess.feed(prompt[None], outputs="last")
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = sess.feed(np.array([[int(np.argmax(logits[0]))]]), outputs="last")
            lat.append(time.perf_counter() - t0)
        busy += sum(lat[-steps:])
    return _stats(lat, len(prompts) * steps, busy)


def pool_run(path, prompts, steps) -> dict:
    from infini_attention.export.pool import StreamPool

    pool = StreamPool(path)
    for s in range(len(prompts)):
        pool.add(s)
    last = pool.feed({s: p for s, p in enumerate(prompts)}, outputs="last")
    lat = []
    for _ in range(steps):
        t0 = time.perf_counter()
        last = pool.feed({k: np.array([int(np.argmax(v))]) for k, v in last.items()}, outputs="last")
        lat.append(time.perf_counter() - t0)
    return _stats(lat, len(prompts) * steps, sum(lat))


def triton_run(server, prompts, steps) -> dict:
    import tritonclient.http as httpclient

    lat, errors = [], []
    lock, barrier = threading.Lock(), threading.Barrier(len(prompts) + 1)

    def stream(s, prompt):
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=120)
            out = [httpclient.InferRequestedOutput("logits", binary_data=True)]

            def infer(ids, **kw):
                inp = httpclient.InferInput("input_ids", [1, len(ids)], "INT64")
                inp.set_data_from_numpy(np.asarray([ids], np.int64))
                return client.infer("infini", [inp], outputs=out, sequence_id=1000 + s, **kw).as_numpy("logits")

            logits = infer(prompt, sequence_start=True)
            barrier.wait()
            mine = []
            for i in range(steps):
                t0 = time.perf_counter()
                logits = infer([int(np.argmax(logits[0, -1]))], sequence_end=i == steps - 1)
                mine.append(time.perf_counter() - t0)
            with lock:
                lat.extend(mine)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=stream, args=(s, p)) for s, p in enumerate(prompts)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return _stats(lat, len(prompts) * steps, seconds)


def _exec_counts(server) -> tuple[int, int, int]:
    """(inference_count, execution_count, compute ns) of the model, from Triton's statistics."""
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}").get_inference_statistics("infini")
    model = stats["model_stats"][0]
    compute = sum(int(b[k]["ns"]) for b in model.get("batch_stats", [])  # per execution, whatever its batch
                  for k in ("compute_input", "compute_infer", "compute_output"))
    return int(model["inference_count"]), int(model["execution_count"]), compute


def _rss_kib(server) -> int:
    from infini_attention.export.serve.server import _children

    total = 0
    for pid in [server.proc.pid, *_children(server.proc.pid)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--steps", type=int, default=32, help="decode steps per stream")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per stream")
    args = ap.parse_args(argv)
    from infini_attention.export.pool import StreamPool
    from infini_attention.export.serve.repository import write_repository
    from infini_attention.export.serve.server import TritonServer

    path = _export(args.preset)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    write_repository(path, work / "repo", max_streams=max(args.streams), idle_s=600)
    pool = StreamPool(path)
    pool.add(0)
    pool.feed({0: np.zeros(args.prompt, np.int64)}, outputs="none")
    state_bytes = sum(a.nbytes for a in pool.state(0).values())
    from infini_attention.reference import io_spec

    ragged_bytes = sum(int(np.prod([1 if d == "batch" else d for d in s.dims])) * np.dtype(s.dtype).itemsize
                       for s in io_spec.ragged_specs(pool.config) if s.direction == "in" and s.name != "chunk_lengths"
                       and s.name != io_spec.ragged_specs(pool.config)[0].name)
    rng = np.random.default_rng(0)
    vocab = pool.config.vocab_size
    results = {"preset": args.preset, "steps": args.steps, "prompt": args.prompt, "rows": [], "command":
               "python benchmarks/bench_serve.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
               "state_bytes_per_stream": state_bytes, "ragged_state_bytes_per_stream": int(ragged_bytes)}
    server = TritonServer(work / "repo", work / "server").start(120)
    try:
        rss0 = _rss_kib(server)
        for S in args.streams:
            prompts = [rng.integers(0, vocab, args.prompt) for _ in range(S)]
            counts0 = _exec_counts(server)
            row = {"streams": S, "sequential": sequential(path, prompts, args.steps),
                   "pool": pool_run(path, prompts, args.steps), "triton": triton_run(server, prompts, args.steps)}
            counts1 = _exec_counts(server)
            # requests per model execution (one ORT round for all of them): Triton's own statistics
            row["triton"]["requests_per_execution"] = ((counts1[0] - counts0[0]) / max(counts1[1] - counts0[1], 1))
            # the model's own time per execution (Triton's compute statistics: model.py, the pool, ORT)
            row["triton"]["model_ms_per_execution"] = (counts1[2] - counts0[2]) / 1e6 / max(counts1[1] - counts0[1], 1)
            base = row["sequential"]["tokens_per_s"]
            row["triton_vs_sequential"] = row["triton"]["tokens_per_s"] / base
            row["pool_vs_sequential"] = row["pool"]["tokens_per_s"] / base
            results["rows"].append(row)
            print(f"S={S:3d}  tokens/s: sequential {base:8.0f}  pool {row['pool']['tokens_per_s']:8.0f} "
                  f"({row['pool_vs_sequential']:.2f}x)  triton {row['triton']['tokens_per_s']:8.0f} "
                  f"({row['triton_vs_sequential']:.2f}x)   p50/p99 ms: sequential {row['sequential']['p50_ms']:.2f}/"
                  f"{row['sequential']['p99_ms']:.2f}  pool {row['pool']['p50_ms']:.2f}/{row['pool']['p99_ms']:.2f}"
                  f"  triton {row['triton']['p50_ms']:.2f}/{row['triton']['p99_ms']:.2f}"
                  f"  (triton: {row['triton']['requests_per_execution']:.1f} requests per execution, "
                  f"{row['triton']['model_ms_per_execution']:.2f} ms in the model each)", flush=True)
        # streams of the last round ended (END); hold the largest S open to see their memory
        S = max(args.streams)
        hold = [rng.integers(0, vocab, args.prompt) for _ in range(S)]
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        rss_before = _rss_kib(server)
        for s, p in enumerate(hold):
            inp = httpclient.InferInput("input_ids", [1, len(p)], "INT64")
            inp.set_data_from_numpy(np.asarray([p], np.int64))
            client.infer("infini", [inp], sequence_id=50000 + s, sequence_start=True)
        results["server_rss_kib"] = {"idle": rss0, "before_hold": rss_before, "holding": _rss_kib(server), "held": S}
    finally:
        server.kill()
    cross = next((r["streams"] for r in results["rows"] if r["triton_vs_sequential"] > 1), None)
    results["crossover_streams"] = cross
    rss = results["server_rss_kib"]
    print(f"state per stream: {state_bytes} B (session layout), {int(ragged_bytes)} B (ragged N-slot layout); "
          f"server RSS +{(rss['holding'] - rss['before_hold']) / rss['held']:.1f} KiB per held stream "
          f"({rss['held']} held); triton beats sequential from S = {cross}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"bench_serve-{args.preset}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

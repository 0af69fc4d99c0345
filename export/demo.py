"""`infini demo`, part 2 (and `infini demo --preset P`): check the PyTorch implementation against the
reference, export it, stream a long input through ONNX Runtime at constant memory, and verify
checkpoints of the stream against PyTorch running the same stream on its own state (`verify.py`).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..reference.tolerances import STATE_TOLERANCES, assert_close
from .stream import Source, segment_time_profile
from .verify import TorchFollower, checkpoint_positions, drift_line, follow_stream


def check_torch_against_reference(config, params, seed: int = 0) -> str:
    """The bundled PyTorch LM (float64) against the reference on 2.5 segments, prefill + tokens."""
    import torch

    from ..reference import lm_forward
    from ..torch_impl import InfiniTransformerLM

    N = config.attn.segment_len
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, (2, 2 * N + N // 2))
    expected, states = lm_forward(config, params, tokens)
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float64).eval()
    cut = N + N // 2 + 1
    with torch.no_grad():
        outs, st = [], None
        for a, b in [(0, cut)] + [(i, i + 1) for i in range(cut, tokens.shape[1])]:
            y, st = model(torch.as_tensor(tokens[:, a:b]), st)
            outs.append(y.numpy())
    r = assert_close("PyTorch float64 vs reference: logits", np.concatenate(outs, 1), expected, "float64")
    for i, (s_t, s_r) in enumerate(zip(st, states)):
        assert_close(f"layer {i} M", s_t.M.numpy(), s_r.M, "float64", STATE_TOLERANCES)
    return r.message() + f" ({tokens.shape[1]} tokens, prefill then {tokens.shape[1] - cut} single tokens)"


def run_demo(preset: str = "small", tokens: int = 1_000_000, out_dir="artifacts/demo", provider: str = "auto",
             verify_every: int = 131072, seed: int = 0, progress: bool = True, echo=print) -> dict:
    from .presets import preset_config, preset_params

    config = preset_config(preset, "lm")
    params = preset_params(config, seed)
    inputs = Source(SimpleNamespace(kind="lm", config=config, attn=config.attn, batch=1), tokens, seed=seed)
    # started first, so that its start-up (importing torch) overlaps the checks and the export
    with TorchFollower(config, params, inputs, checkpoint_positions(tokens, verify_every)) as follower:
        return _check_export_stream(preset, config, params, follower, tokens, Path(out_dir), provider, verify_every,
                                    seed, progress, echo)


def _check_export_stream(preset, config, params, follower, tokens, out_dir, provider, verify_every, seed, progress,
                         echo) -> dict:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .exporter import export
    from .session import InfiniSession

    out_dir.mkdir(parents=True, exist_ok=True)
    echo(f"[1/4] PyTorch implementation vs the reference ({preset} preset)")
    echo("      " + check_torch_against_reference(config, params, seed))

    echo("[2/4] export: PyTorch checkpoint -> ONNX (self-checked against the reference)")
    ckpt = save_checkpoint(out_dir / f"{preset}.pt", config, params)
    config, params = load_checkpoint(ckpt)
    result = export(config, params, out_dir / f"{preset}.onnx", seed=seed)
    worst = max(result.checks, key=lambda line: float(line.rsplit(", ", 1)[-1].split("x")[0]))
    echo(f"      {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, model_id {result.model_id}, "
         f"{result.seconds:.1f} s); {len(result.checks)} comparisons, worst: {worst}")

    sess = InfiniSession(result.path, provider=provider, intra_op_threads=1)  # the follower has the other core
    echo(f"[3/4] stream {tokens:,} tokens through ONNX Runtime on {sess.provider_used} ({sess.provider_reason}); "
         f"PyTorch runs the same stream on its own state in a second process")
    verified, report = follow_stream(sess, follower, Source(sess, tokens, seed=seed), verify_every, progress)
    echo("[4/4] results")
    first, last = report.checkpoints[0], report.checkpoints[-1]
    for cp, check in zip([None] + report.checkpoints, verified):
        where = "start" if cp is None else f"{cp['position']:>9,} tok  RSS {cp['rss'] / 2**20:7.1f} MiB"
        echo(f"      {where}  {check.line()}")
    profile = segment_time_profile(report, sess.segment_len)
    summary = {
        "tokens": report.tokens, "seconds": report.seconds, "tokens_per_second": report.tokens_per_second,
        "provider": sess.provider_used, "state_nbytes": report.state_nbytes,
        "peak_rss_first_checkpoint": first["peak_rss"], "peak_rss_end": last["peak_rss"],
        "ms_per_segment_first_window": 1e3 * profile[0] if profile else None,
        "ms_per_segment_last_window": 1e3 * profile[-1] if profile else None, "verified": len(verified),
        "verified_ok": all(c.ok for c in verified), "drift": [(c.position, c.scores) for c in verified],
        "torch_seconds": follower.seconds,
    }
    echo(f"      {report.tokens:,} tokens in {report.seconds:.1f} s = {report.tokens_per_second:,.0f} tokens/s; "
         f"state {report.state_nbytes:,} bytes")
    echo(f"      peak RSS {first['peak_rss'] / 2**20:.1f} MiB at {first['position']:,} tokens, "
         f"{last['peak_rss'] / 2**20:.1f} MiB at {last['position']:,} "
         f"({100 * (last['peak_rss'] / first['peak_rss'] - 1):+.1f}%)")
    if profile:
        echo(f"      time per segment: {summary['ms_per_segment_first_window']:.2f} ms (first 64K tokens), "
             f"{summary['ms_per_segment_last_window']:.2f} ms (last 64K)")
    echo(f"      {len(verified)} checkpoints verified against PyTorch, which ran the whole stream on its own state "
         f"in a second process ({follower.seconds:.1f} s): " + ("all ok" if summary["verified_ok"] else
                                                                 "MISMATCH (see above)"))
    echo("      " + drift_line(verified))
    return summary

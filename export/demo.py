"""`infini demo`: check the PyTorch implementation, export it, stream a long input through ONNX
Runtime at constant memory, and verify checkpoints of the stream against PyTorch.

At each checkpoint the ONNX Runtime state is copied into the PyTorch model; both then run the
next N + 3 tokens (a prefill of N - 2 tokens and five single tokens, crossing a segment
boundary) and their logits and states are compared; the ORT stream is rolled back and goes
on unchanged. So the check covers the stream at its full depth (M, z summed over ~1M tokens).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..reference.tolerances import STATE_TOLERANCES, assert_close
from .stream import Source, run_stream, segment_time_profile


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


def verify_against_torch(session, model, source: Source, position: int) -> str:
    """Run the next N + 3 tokens from the session's state in ORT and PyTorch; compare; roll back."""
    import torch

    from ..torch_impl import TorchInfiniState

    N = session.segment_len
    stop = min(source.length, position + N + 3)
    if stop <= position:
        return "end of stream: nothing left to verify"
    ids = source.read(position, stop)
    snapshot = session.state()
    cuts = [0, min(N - 2, ids.shape[1])] + list(range(N - 1, ids.shape[1] + 1))
    cuts = sorted(set(c for c in cuts if 0 <= c <= ids.shape[1]))
    L = session.config.n_layers
    states = [TorchInfiniState(*(torch.from_numpy(snapshot[f"{p}.{i}.{f}"]) for p, f in
                                 (("past_memory", "M"), ("past_memory", "z"), ("past_key_values", "key"),
                                  ("past_key_values", "value"))),
                               segments=torch.tensor(int(snapshot["past_segments"]))) for i in range(L)]
    ort_out, torch_out = [], []
    with torch.no_grad():
        for a, b in zip(cuts, cuts[1:]):
            ort_out.append(session.feed(ids[:, a:b]))
            y, states = model(torch.as_tensor(ids[:, a:b]), states)
            torch_out.append(y.numpy())
    got = session.state()
    session.set_state(snapshot, position=position)
    r = assert_close(f"tokens {position:,}..{stop - 1:,}: logits ORT vs PyTorch", np.concatenate(ort_out, 1),
                     np.concatenate(torch_out, 1), "float32")
    for i, st in enumerate(states):
        assert_close(f"layer {i} M at {stop:,}", got[f"past_memory.{i}.M"], st.M.numpy(), "float32", STATE_TOLERANCES)
        assert_close(f"layer {i} z at {stop:,}", got[f"past_memory.{i}.z"], st.z.numpy(), "float32", STATE_TOLERANCES)
    return r.message()


def run_demo(preset: str = "small", tokens: int = 1_000_000, out_dir="artifacts/demo", provider: str = "auto",
             verify_every: int = 131072, seed: int = 0, progress: bool = True, echo=print) -> dict:
    import torch

    from ..torch_impl import InfiniTransformerLM
    from .checkpoint import load_checkpoint, save_checkpoint
    from .exporter import export
    from .presets import preset_config, preset_params
    from .session import InfiniSession

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = preset_config(preset, "lm")
    params = preset_params(config, seed)
    echo(f"[1/4] PyTorch implementation vs the reference ({preset} preset)")
    echo("      " + check_torch_against_reference(config, params, seed))

    echo("[2/4] export: PyTorch checkpoint -> ONNX (self-checked against the reference)")
    ckpt = save_checkpoint(out_dir / f"{preset}.pt", config, params)
    config, params = load_checkpoint(ckpt)
    result = export(config, params, out_dir / f"{preset}.onnx", seed=seed)
    worst = max(result.checks, key=lambda line: float(line.rsplit(", ", 1)[-1].split("x")[0]))
    echo(f"      {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, model_id {result.model_id}, "
         f"{result.seconds:.1f} s); {len(result.checks)} comparisons, worst: {worst}")

    sess = InfiniSession(result.path, provider=provider)
    echo(f"[3/4] stream {tokens:,} tokens through ONNX Runtime on {sess.provider_used} ({sess.provider_reason})")
    model = InfiniTransformerLM.from_numpy(config, params, dtype=torch.float32).eval()
    source = Source(sess, tokens, seed=seed)
    verified = [verify_against_torch(sess, model, source, 0)]
    report = run_stream(sess, source, checkpoint_every=verify_every, progress=progress,
                        on_checkpoint=lambda s, pos: verified.append(verify_against_torch(s, model, source, pos)))
    echo("[4/4] results")
    first, last = report.checkpoints[0], report.checkpoints[-1]
    for cp, line in zip([None] + report.checkpoints, verified):
        where = "start" if cp is None else f"{cp['position']:>9,} tok  RSS {cp['rss'] / 2**20:7.1f} MiB"
        echo(f"      {where}  {line}")
    profile = segment_time_profile(report, sess.segment_len)
    summary = {
        "tokens": report.tokens, "seconds": report.seconds, "tokens_per_second": report.tokens_per_second,
        "provider": sess.provider_used, "state_nbytes": report.state_nbytes,
        "peak_rss_first_checkpoint": first["peak_rss"], "peak_rss_end": last["peak_rss"],
        "ms_per_segment_first_window": 1e3 * profile[0] if profile else None,
        "ms_per_segment_last_window": 1e3 * profile[-1] if profile else None, "verified": len(verified),
    }
    echo(f"      {report.tokens:,} tokens in {report.seconds:.1f} s = {report.tokens_per_second:,.0f} tokens/s; "
         f"state {report.state_nbytes:,} bytes")
    echo(f"      peak RSS {first['peak_rss'] / 2**20:.1f} MiB at {first['position']:,} tokens, "
         f"{last['peak_rss'] / 2**20:.1f} MiB at {last['position']:,} "
         f"({100 * (last['peak_rss'] / first['peak_rss'] - 1):+.1f}%)")
    if profile:
        echo(f"      time per segment: {summary['ms_per_segment_first_window']:.2f} ms (first 64K tokens), "
             f"{summary['ms_per_segment_last_window']:.2f} ms (last 64K)")
    echo(f"      {len(verified)} checkpoints verified against PyTorch")
    return summary

"""`infini export`, `infini stream` and `infini demo` (registered by conformance/cli.py).

    infini export --preset tiny -o tiny.onnx                 # built-in preset, random weights
    infini export --checkpoint model.pt -o model.onnx        # a saved PyTorch checkpoint
    infini stream tiny.onnx --generate 1000000               # generated input, any length
    infini stream model.onnx --tokens ids.npy --save-state s.npz   # a file of token ids
    infini stream model.onnx --tokens ids.npy --resume s.npz --save-state s.npz
    infini demo                                              # the full check-export-stream demo

Also runnable alone: ``python -m infini_attention.export.cli ...``.
"""
from __future__ import annotations

import argparse
import json
import sys


DEMO_LENGTH = 131072  # where the committed passkey model is reliable (examples/passkey/results/RESULTS.md)


def register(subparsers) -> None:
    """Add the export, stream and demo subcommands; each sets ``func(args) -> exit code``."""
    p = subparsers.add_parser("export", help="export a layer or the LM to ONNX (checked against the reference)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="built-in preset: tiny, small or paper (default tiny)")
    src.add_argument("--checkpoint", help="a PyTorch checkpoint (export.checkpoint.save_checkpoint) or .npz")
    p.add_argument("--kind", choices=["lm", "layer"], default="lm", help="with --preset: the LM or one layer")
    p.add_argument("-o", "--output", help="the .onnx file (default: PRESET-KIND.onnx)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="compute dtype (the state stays float32)")
    p.add_argument("--seed", type=int, default=0, help="weights of a preset, and the self-check's inputs")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs reference self-check")
    p.add_argument("--show-io", action="store_true", help="print the graph's input/output table")
    p.set_defaults(func=_guarded(cmd_export))

    p = subparsers.add_parser("stream", help="stream tokens of any length through an exported model in ONNX Runtime")
    p.add_argument("model", help="an .onnx file written by `infini export`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="token ids: .npy, .txt, or raw binary (see --raw-dtype)")
    src.add_argument("--generate", type=int, metavar="T", help="stream T generated (random) tokens / inputs")
    p.add_argument("--raw-dtype", default="uint16", help="element type of a raw binary tokens file")
    p.add_argument("--chunk", type=int, help="tokens per call (default: the segment length N)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--save-state", metavar="FILE", help="save the state here (atomically) at every checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=65536, metavar="T")
    p.add_argument("--resume", metavar="FILE", help="continue the stream from a saved state")
    p.add_argument("--then-generate", type=int, default=0, metavar="K", help="LM: then emit K tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampled")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=_guarded(cmd_stream))

    p = subparsers.add_parser("demo", help="the main job: check PyTorch vs the spec, export the trained passkey "
                                           "model, stream a long document through ONNX Runtime, retrieve the passkey")
    p.add_argument("--length", type=int, default=DEMO_LENGTH, help=f"prompt tokens (default {DEMO_LENGTH:,})")
    p.add_argument("--depth", type=float, default=0.5, help="where the passkey sits, 0 (start) .. 1 (end)")
    p.add_argument("--update", choices=["linear", "delta"], default="linear", help="which trained model")
    p.add_argument("--preset", default=None,
                   help="only the long-stream part, on random weights of this preset (default: small after the passkey)")
    p.add_argument("--tokens", type=int, default=1_000_000,
                   help="long-stream part: tokens streamed through ORT and verified against PyTorch (0: skip)")
    p.add_argument("--verify-every", type=int, default=None, metavar="T",
                   help="verify ORT against PyTorch every T tokens (default 32768; 131072 with --preset)")
    p.add_argument("--out-dir", default="artifacts/demo")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_guarded(cmd_demo))


def cmd_export(args) -> int:
    from .checkpoint import load_checkpoint
    from .exporter import ExportError, export
    from ..reference.io_spec import markdown_table
    from .presets import preset_config, preset_params

    if args.checkpoint:
        config, params = load_checkpoint(args.checkpoint)
        name = args.checkpoint.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    else:
        preset = args.preset or "tiny"
        config = preset_config(preset, args.kind)
        params, name = preset_params(config, args.seed), f"{preset}-{args.kind}"
    out = args.output or f"{name}.onnx"
    try:
        r = export(config, params, out, dtype=args.dtype, opset=args.opset, check=not args.no_check, seed=args.seed)
    except ExportError as exc:
        print(f"infini export: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"exported {r.kind} -> {r.path} ({r.path.stat().st_size / 2**20:.2f} MiB, {r.dtype}, model_id {r.model_id}, "
          f"{r.seconds:.1f} s)")
    print(f"config: {json.dumps(config.to_dict())}")
    if r.checks:
        shown = [line for line in r.checks if "PyTorch implementation" in line] or r.checks[:2]
        print(f"self-check: {len(r.checks)} comparisons against the reference passed, e.g.\n  " + "\n  ".join(shown))
    if args.show_io:
        print(markdown_table(config, args.dtype))
    return 0


def cmd_stream(args) -> int:
    from .session import InfiniSession
    from .stream import Source, run_stream, segment_time_profile

    sess = InfiniSession(args.model, provider=args.provider, batch=args.batch)
    print(f"model {args.model}: {sess.kind}, model_id {sess.model_id}; {sess.provider_used} ({sess.provider_reason})")
    if args.resume:
        sess.load_state(args.resume)
        print(f"resumed at token {sess.position:,} from {args.resume}")
    source = Source(sess, args.generate, path=args.tokens, raw_dtype=args.raw_dtype, seed=args.seed)
    try:
        report = run_stream(sess, source, chunk=args.chunk, checkpoint_every=args.checkpoint_every,
                            save_state=args.save_state, progress=not args.no_progress)
    except KeyboardInterrupt:
        saved = f"; last saved state: {args.save_state}" if args.save_state else ""
        print(f"\ninterrupted at token {sess.position:,}{saved}", file=sys.stderr)
        return 130
    profile = segment_time_profile(report, args.chunk or sess.segment_len)
    peak = max((c["peak_rss"] for c in report.checkpoints), default=0)
    print(f"streamed {report.tokens:,} tokens (to position {sess.position:,}) in {report.seconds:.2f} s: "
          f"{report.tokens_per_second:,.0f} tokens/s")
    print(f"peak memory {peak / 2**20:.1f} MiB; state {report.state_nbytes:,} bytes "
          f"({sess.segments:,} segments written, {sess.pending} tokens pending)")
    if len(profile) >= 2:
        print(f"time per call: {1e3 * profile[0]:.2f} ms (first 64K tokens), {1e3 * profile[-1]:.2f} ms (last 64K)")
    if args.save_state and report.saved:
        print(f"state saved at token {report.saved:,} -> {args.save_state}")
    if args.then_generate and sess.kind == "lm" and sess.position:
        out = sess.generate(args.then_generate, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        print("generated:", " ".join(map(str, out[0].tolist())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens": report.tokens, "seconds": report.seconds, "position": sess.position,
                       "tokens_per_second": report.tokens_per_second, "checkpoints": report.checkpoints,
                       "state_nbytes": report.state_nbytes, "provider": sess.provider_used,
                       "window_seconds_per_call": profile}, f, indent=1)
    return 0


def cmd_demo(args) -> int:
    if args.preset is not None:
        from .demo import run_demo

        run_demo(args.preset, args.tokens, args.out_dir, args.provider, args.verify_every or 131072, args.seed,
                 progress=not args.no_progress)
        return 0
    from .demo import run_demo
    from .passkey_demo import run_passkey_demo

    print("== Part 1: passkey retrieval by the trained model (examples/passkey) ==")
    result = run_passkey_demo(args.length, args.depth, args.update, args.verify_every or 32768, args.out_dir,
                              args.provider, args.seed, progress=not args.no_progress)
    if args.tokens > 0:
        print(f"\n== Part 2: {args.tokens:,} tokens at constant memory ('small' preset, random weights) ==")
        run_demo("small", args.tokens, args.out_dir, args.provider, 131072, args.seed, progress=not args.no_progress)
    return 0 if result["correct"] else 1


def _guarded(cmd):
    """Input errors print one line naming what was expected (exit 2) instead of a traceback."""

    def run(args) -> int:
        try:
            return cmd(args)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            print(f"infini {cmd.__name__[4:]}: error: {exc}", file=sys.stderr)
            return 2

    run.__name__ = cmd.__name__
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="infini", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

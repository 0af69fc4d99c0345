"""`infini export`, `infini stream` and `infini demo`: the export provider of the ``infini`` command
(``register``, entry point ``infini_attention.commands`` in pyproject.toml; the one parser, dispatch
and error policy are ``reference/cli.py``).

    infini export --preset tiny -o tiny.onnx                 # built-in preset, random weights
    infini export --checkpoint model_dir -o model.onnx       # save_pretrained dir / .safetensors / .pt / .npz
    infini export --module my_pkg.models:build --checkpoint w.safetensors -o m.onnx   # your own model
    infini stream tiny.onnx --generate 1000000               # generated input, any length
    infini stream model.onnx --tokens ids.npy --save-state s.npz   # a file of token ids
    infini stream model.onnx --tokens ids.npy --resume s.npz --save-state s.npz
    infini demo                                              # the full check-export-stream demo

Also runnable as ``python -m infini_attention.export.cli ...`` (the whole ``infini`` command).
Options and output paths are checked before any long work starts; errors are one line (exit 2).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..reference.errors import UsageError, check_output_path


DEMO_LENGTH = 131072  # where the committed passkey model is reliable (examples/passkey/results/RESULTS.md)
# `infini demo --quick` (CI, seconds): the same steps, shorter streams; "every": verification intervals
DEMO_QUICK = {"length": 8192, "every": 2048, "tokens": 65536, "stream_every": 16384}


def register(subparsers) -> None:
    """Add the export, stream and demo subcommands; each sets ``func(args) -> exit code``."""
    p = subparsers.add_parser("export", help="export a layer, the LM or your own model to ONNX (self-checked)")
    p.add_argument("--preset", default=None, help="built-in preset: tiny, small or paper (default tiny)")
    p.add_argument("--checkpoint", metavar="DIR_OR_FILE",
                   help="a save_pretrained directory (config.json + model.safetensors), a .safetensors file with "
                        "its config in the metadata (export.checkpoint.save_checkpoint), or an older .pt / .npz; "
                        "with --module: a .safetensors of the model's state_dict (safetensors.torch.save_model)")
    p.add_argument("--module", metavar="PKG.MOD:BUILD",
                   help="your model: BUILD() returns an nn.Module of the streaming protocol (forward(inputs, "
                        "states) -> (outputs, states); README 'Bring your model')")
    p.add_argument("--kind", choices=["lm", "layer"], default=None,
                   help="with --preset: the LM or one layer (default lm)")
    p.add_argument("-o", "--output", help="the .onnx file (default: PRESET-KIND.onnx)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="compute dtype (the state stays float32, or --state-dtype)")
    p.add_argument("--state-dtype", choices=["float32", "float64"], default="float32",
                   help="dtype of the memory M, z (float64: keeps absorbing writes far past 1e9 tokens)")
    p.add_argument("--seed", type=int, default=0, help="weights of a preset, and the self-check's inputs")
    p.add_argument("--opset", type=int, default=23,
                   help="ONNX opset: 23+ uses the standard Attention op (default 23); 17 MatMul/Softmax")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="torch.export (default) or the deprecated TorchScript tracer (opset <= 20)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs reference self-check")
    p.add_argument("--show-io", action="store_true", help="print the graph's input/output table")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("stream", help="stream tokens of any length through an exported model in ONNX Runtime")
    p.add_argument("model", help="an .onnx file written by `infini export`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="token ids: .npy, .txt, or raw binary (see --raw-dtype); after --resume, "
                                      "the file's tokens from the resumed position on")
    src.add_argument("--generate", type=int, metavar="T", help="stream T generated (random) tokens / inputs, T >= 0; "
                                                               "after --resume, T more from the resumed position")
    p.add_argument("--raw-dtype", default="uint16", help="integer element type of a raw binary tokens file")
    p.add_argument("--chunk", type=int, help="tokens per call, >= 1 (default: the segment length N)")
    p.add_argument("--batch", type=int, default=1, help="rows streamed side by side, >= 1 (must fit in memory)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--save-state", metavar="FILE", help="save the state here (atomically) at every checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=65536, metavar="T", help="tokens between checkpoints, "
                                                                                    ">= 1 (default 65536)")
    p.add_argument("--resume", metavar="FILE", help="continue the stream from a saved state")
    p.add_argument("--then-generate", type=int, default=0, metavar="K", help="LM: then emit K >= 0 tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="finite, >= 0; 0: greedy; > 0: sampled")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K best, 1 <= K <= vocab_size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=cmd_stream)

    p = subparsers.add_parser("demo", help="the main job: check PyTorch vs the spec, export the trained passkey "
                                           "model, stream a long document through ONNX Runtime, retrieve the passkey")
    p.add_argument("--quick", action="store_true",
                   help=f"a few-second run (CI): a passkey document of {DEMO_QUICK['length']:,} tokens, then "
                        f"{DEMO_QUICK['tokens']:,} tokens of the small preset, verified every "
                        f"{DEMO_QUICK['every']:,} / {DEMO_QUICK['stream_every']:,} tokens")
    p.add_argument("--length", type=int, default=None,
                   help=f"prompt tokens (default {DEMO_LENGTH:,}; {DEMO_QUICK['length']:,} with --quick)")
    p.add_argument("--depth", type=float, default=0.5, help="where the passkey sits, 0 (start) .. 1 (end)")
    p.add_argument("--update", choices=["linear", "delta"], default="linear", help="which trained model")
    p.add_argument("--preset", default=None,
                   help="only the long-stream part, on random weights of this preset (default: small after the passkey)")
    p.add_argument("--tokens", type=int, default=None,
                   help="long-stream part: tokens streamed through ORT and, on its own state, PyTorch (default "
                        f"1,000,000; {DEMO_QUICK['tokens']:,} with --quick; 0: skip)")
    p.add_argument("--verify-every", type=int, default=None, metavar="T",
                   help="compare ORT with PyTorch every T tokens (default 32768, 2048 with --quick; with --preset "
                        "131072, 16384 with --quick)")
    p.add_argument("--out-dir", default="artifacts/demo")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_export(args) -> int:
    from .exporter import ExportError, check_options, export
    from .presets import preset_config, preset_params

    try:
        check_options(args.dtype, args.state_dtype, args.exporter, args.opset)
    except ValueError as exc:
        option, _, rest = str(exc).partition(":")  # "opset: expected ..." -> "--opset: expected ..."
        raise UsageError(f"--{option.replace('_', '-')}:{rest}") from None

    if args.preset and (args.checkpoint or args.module):
        raise UsageError(f"--preset: expected no --checkpoint or --module with it, got --preset {args.preset!r} and "
                         f"{'--module' if args.module else '--checkpoint'}")
    if args.kind and (args.checkpoint or args.module):  # the file or the model says what it is
        raise UsageError(f"--kind: expected only with --preset, got --kind {args.kind} with "
                         f"{'--module' if args.module else '--checkpoint'}")
    args.kind = args.kind or "lm"
    if args.module:
        return _export_module(args)
    if args.checkpoint:
        name = Path(args.checkpoint).stem or "model"
        check_output_path("-o/--output", args.output or f"{name}.onnx")
        config, params = _read_checkpoint(args.checkpoint)
    else:
        preset = args.preset or "tiny"
        config = preset_config(preset, args.kind)
        name = f"{preset}-{args.kind}"
        check_output_path("-o/--output", args.output or f"{name}.onnx")
        params = preset_params(config, args.seed)
    out = args.output or f"{name}.onnx"
    try:
        r = export(config, params, out, dtype=args.dtype, opset=args.opset, check=not args.no_check, seed=args.seed,
                   exporter=args.exporter, state_dtype=args.state_dtype)
    except ExportError as exc:
        print(f"infini export: FAILED: {exc}", file=sys.stderr)
        return 1
    return _report(args, r)


def _report(args, r) -> int:
    from ..reference.io_spec import markdown_table

    config = r.config
    print(f"exported {r.kind} -> {r.path} ({r.path.stat().st_size / 2**20:.2f} MiB, {r.dtype}, state {r.state_dtype}, "
          f"model_id {r.model_id}, {r.seconds:.1f} s)")
    asked = "" if r.opset == args.opset else f" (--opset {args.opset} asked; the {r.exporter} exporter's minimum)"
    print(f"graph: exporter {r.exporter}, opset {r.opset}{asked}; {r.nodes['total']} nodes (branches: inside a segment "
          f"{r.nodes['inside']}, ending on a boundary {r.nodes['piece']}, longer {r.nodes['chunk']})")
    print(f"config: {json.dumps(config.to_dict())}")
    if r.checks:
        shown = [line for line in r.checks if "PyTorch implementation" in line] or r.checks[:2]
        against = "the reference" if r.kind != "model" else "the model's own forward in float64"
        print(f"self-check: {len(r.checks)} comparisons against {against} passed, e.g.\n  " + "\n  ".join(shown))
    if args.show_io:
        print(markdown_table(config, args.dtype, args.state_dtype))
    return 0


def _export_module(args) -> int:
    """`infini export --module`: build the user's model, load --checkpoint into it, export (export_model)."""
    from .exporter import ExportError, export_model
    from .module import build_model, load_weights

    name = Path(args.checkpoint).stem if args.checkpoint else args.module.rpartition(":")[2]
    out = args.output or f"{name or 'model'}.onnx"
    check_output_path("-o/--output", out)
    model = build_model(args.module)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    try:
        r = export_model(model, out, name=args.module, dtype=args.dtype, opset=args.opset, check=not args.no_check,
                         seed=args.seed, exporter=args.exporter, state_dtype=args.state_dtype)
    except ExportError as exc:
        print(f"infini export: FAILED: {exc}", file=sys.stderr)
        return 1
    return _report(args, r)


def _read_checkpoint(path):
    """load_checkpoint, with any failure to read the file (junk, truncated, not a checkpoint) one line."""
    from .checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except (FileNotFoundError, ImportError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load/np.load of a user's file raise many types
        text = (str(exc).splitlines() or [""])[0][:300]
        if isinstance(exc, ValueError) and str(path) in text:
            raise  # load_checkpoint's own message, naming the file
        raise UsageError(f"--checkpoint {path!r}: expected a checkpoint written by export.checkpoint.save_checkpoint "
                         f"(safetensors file or directory; or an older .pt, or an .npz with a '__config__' entry), "
                         f"cannot read it ({type(exc).__name__}: {text})") from None


def _check_stream_options(args) -> None:
    """Every option and output path of `infini stream`, before the model is loaded or a token streamed."""
    from .stream import raw_token_dtype

    for option, value, low in (("--generate", args.generate, 0), ("--chunk", args.chunk, 1),
                               ("--batch", args.batch, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                               ("--then-generate", args.then_generate, 0), ("--top-k", args.top_k, 1)):
        if value is not None and value < low:
            raise UsageError(f"{option}: expected an integer >= {low}, got {value}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature: expected a finite number >= 0 (0: greedy), got {args.temperature}")
    raw_token_dtype(args.raw_dtype)
    for option, path in (("--save-state", args.save_state), ("--json", args.json)):
        if path:
            check_output_path(option, path)


def cmd_stream(args) -> int:
    from .stream import Source, StreamReport, open_session, run_stream, segment_time_profile

    _check_stream_options(args)
    sess = open_session(args.model, args.provider, args.batch, args.chunk)
    print(f"model {args.model}: {sess.kind}, model_id {sess.model_id}; {sess.provider_used} ({sess.provider_reason})")
    if args.top_k is not None and sess.config.takes_tokens and args.top_k > sess.config.output_width:
        raise UsageError(f"--top-k: expected an integer in [1, {sess.config.output_width}] (vocab_size), got "
                         f"{args.top_k}")
    if args.then_generate and not sess.config.takes_tokens:
        what = "a single-layer model" if sess.kind == "layer" else "a model that takes vectors"
        raise UsageError(f"--then-generate: expected 0 for {what} (it has no tokens to emit), got "
                         f"{args.then_generate}")
    if args.resume:
        sess.load_state(args.resume)
        print(f"resumed at token {sess.position:,} from {args.resume}")
    end = None if args.generate is None else sess.position + args.generate  # T more tokens, resumed or not
    source = Source(sess, end, path=args.tokens, raw_dtype=args.raw_dtype, seed=args.seed)
    if sess.position > source.length:
        raise UsageError(f"--resume {args.resume}: expected a state at most at the end of --tokens "
                         f"({source.length:,} tokens), got a state at token {sess.position:,}")
    if args.then_generate and source.length == sess.position:
        raise UsageError(f"--then-generate: expected tokens to stream first (generation continues from their last "
                         f"logits), got none to stream from position {sess.position:,}")
    report = StreamReport()
    try:
        run_stream(sess, source, chunk=args.chunk, checkpoint_every=args.checkpoint_every,
                   save_state=args.save_state, progress=not args.no_progress, report=report)
    except KeyboardInterrupt:
        saved = (f"; last saved state: {args.save_state} at token {report.saved:,}" if report.saved else
                 f"; nothing saved in this run ({args.save_state} unchanged)" if args.save_state else "")
        print(f"infini stream: interrupted at token {sess.position:,}{saved}", file=sys.stderr)
        return 130
    except MemoryError:
        raise UsageError(f"--batch: expected a batch whose stream fits in memory, got {args.batch:,} (out of memory "
                         f"at token {sess.position:,})") from None
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
    if args.then_generate:
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
    """Exit 0 when every check passed and the passkey was retrieved, 1 otherwise."""
    from .demo import run_demo

    q = DEMO_QUICK if args.quick else {"length": DEMO_LENGTH, "every": 32768, "tokens": 1_000_000,
                                        "stream_every": 131072}
    tokens = q["tokens"] if args.tokens is None else args.tokens
    length = q["length"] if args.length is None else args.length
    # checked before anything runs: a zero interval would never reach a checkpoint
    lows = (("--length", length, 16), ("--tokens", tokens, 0 if args.preset is None else 1),
            ("--verify-every", args.verify_every, 1))
    for option, value, low in lows:
        if value is not None and value < low:
            raise UsageError(f"{option}: expected an integer >= {low}, got {value}")
    if not 0.0 <= args.depth <= 1.0:
        raise UsageError(f"--depth: expected a number in [0, 1] (0: start of the document, 1: end), got {args.depth}")
    if args.preset is not None:
        r = run_demo(args.preset, tokens, args.out_dir, args.provider, args.verify_every or q["stream_every"],
                     args.seed, progress=not args.no_progress)
        return 0 if r["verified_ok"] else 1
    from .passkey.demo import run_passkey_demo

    print("== Part 1: passkey retrieval by the trained model (infini_attention.export.passkey) ==")
    result = run_passkey_demo(length, args.depth, args.update, args.verify_every or q["every"], args.out_dir,
                              args.provider, args.seed, progress=not args.no_progress)
    ok = result["correct"] and result["verified_ok"]
    if tokens > 0:
        print(f"\n== Part 2: {tokens:,} tokens at constant memory ('small' preset, random weights) ==")
        ok = run_demo("small", tokens, args.out_dir, args.provider, q["stream_every"], args.seed,
                      progress=not args.no_progress)["verified_ok"] and ok
    return 0 if ok else 1


if __name__ == "__main__":
    from ..reference.cli import main

    sys.exit(main())

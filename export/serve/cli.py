"""`infini serve triton MODEL.onnx --repository DIR`: the serving provider of the ``infini`` command (entry point
``infini_attention.commands`` in pyproject.toml). Every argument (model, repository, spill dir, ports) is checked
before anything is written or started; errors are one line (exit 2).

    infini serve triton tiny.onnx --repository repo --spill-dir spill         # write the model repository
    infini serve triton tiny.onnx --repository repo --start --http-port 8000  # ... and run tritonserver on it
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve an exported model to many streams (Triton Inference Server)")
    sub = p.add_subparsers(dest="server", required=True)
    t = sub.add_parser("triton", help="write a Triton model repository for MODEL.onnx (and optionally start it)")
    t.add_argument("model", help="an .onnx file written by `infini export` (a stateful export)")
    t.add_argument("--repository", required=True, help="the directory to write (new, empty, or written by this)")
    t.add_argument("--spill-dir", help="keep every stream's state here too (restarts and other instances resume)")
    t.add_argument("--max-streams", type=int, default=64, help="streams batched into one call (default 64)")
    t.add_argument("--max-chunk", type=int, default=4096, help="most tokens of one request (default 4096)")
    t.add_argument("--idle-timeout", type=float, default=600.0, help="seconds after which an idle stream is freed")
    t.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads of the model (0: its default)")
    t.add_argument("--start", action="store_true", help="then run tritonserver on it (in the foreground)")
    t.add_argument("--http-port", type=int, default=8000)
    t.add_argument("--grpc-port", type=int, default=8001)
    t.set_defaults(func=cmd_triton)


def cmd_triton(args) -> int:
    from .repository import check_repository_dir, check_spill_dir, check_stateful_model, write_repository
    from .server import TritonServer, check_port, triton_root

    check_stateful_model(args.model)
    check_repository_dir(args.repository)
    check_spill_dir(args.spill_dir)
    if args.start:
        triton_root()
        check_port("--http-port", args.http_port)
        check_port("--grpc-port", args.grpc_port)
    repo = write_repository(args.model, args.repository, spill_dir=args.spill_dir, max_streams=args.max_streams,
                            max_chunk=args.max_chunk, idle_s=args.idle_timeout, threads=args.threads)
    print(f"wrote the Triton model repository {repo} (models/infini: python backend; "
          f"onnxruntime_backend/infini: implicit-state config, not run here)")
    if not args.start:
        return 0
    import signal
    import sys

    server = TritonServer(repo, repo / ".server", args.http_port, args.grpc_port)
    # the server runs in a process group of its own: SIGTERM/SIGHUP to this command must end it too
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    try:
        server.start()
        print(f"tritonserver ready: http 127.0.0.1:{server.http_port}, grpc 127.0.0.1:{server.grpc_port} "
              f"(log {server.log})", flush=True)
        server.proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()
    return 0

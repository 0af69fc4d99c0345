"""`infini demo`, part 1: the README's main job, on the committed passkey model (examples/passkey/).

`examples.passkey.demo.run_demo` with verification on: the bundled PyTorch implementation against
the NumPy reference on the model's own weights; export to ONNX (self-checked); a long passkey
document streamed through ONNX Runtime segment by segment, verified against PyTorch at checkpoints
(logits and memory state) with resident memory recorded; then the question, the answer decoded
token by token, and what happened.

The passkey task and weights live in the source checkout's ``examples/passkey`` (they are an
example, not part of the installed package), so this demo needs a checkout.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _passkey_module(name: str):
    """examples.passkey.<name> from the checkout this package is installed from."""
    if not (REPO_ROOT / "examples" / "passkey" / "data.py").is_file():
        raise RuntimeError(f"demo: expected the source checkout's examples/passkey next to {REPO_ROOT / 'export'}; "
                           "install the project editable from a checkout (bash .ci/setup), or use "
                           "`infini demo --preset small` for the random-weights streaming demo")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(f"examples.passkey.{name}")


def run_passkey_demo(length: int, depth: float = 0.5, update: str = "linear", verify_every: int = 32768,
                     out_dir="artifacts/demo", provider: str = "auto", seed: int = 0, progress: bool = True,
                     echo=print) -> dict:
    result = _passkey_module("demo").run_demo(length, depth, update, seed, out_dir=out_dir, progress=progress,
                                              provider=provider, verify_every=verify_every, echo=echo)
    echo(f"peak RSS {result['peak_rss_first'] / 2**20:.1f} MiB after {result['first_checkpoint']:,} tokens, "
         f"{result['peak_rss_end'] / 2**20:.1f} MiB after {result['prompt_length']:,} "
         f"({100 * (result['peak_rss_end'] / result['peak_rss_first'] - 1):+.1f}%)")
    return result

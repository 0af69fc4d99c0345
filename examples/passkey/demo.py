"""`python -m examples.passkey.demo [--control] [--length 1048576] ...`: the passkey demonstration.

It lives in the package (`infini_attention.export.passkey.demo`, also `python -m
infini_attention.export.passkey.demo`) so that `infini demo` runs from an installed wheel.
"""
from infini_attention.export.passkey.demo import DEMO_LENGTH, main, run_demo

__all__ = ["DEMO_LENGTH", "main", "run_demo"]

if __name__ == "__main__":
    raise SystemExit(main())

"""Reproducing a failure outside the suite: the Python printed under every FAIL, and the helpers it uses.

The printed code rebuilds the example from its seeds (``strategies.params_from_seed``,
``x_from_seed``), replays the property's edits, and compares with the same helpers the suite
uses: ``run`` (the implementation, called exactly as the suite calls it) and ``ref`` (the
float64 reference on the dtype-rounded inputs, SPEC.md §11).
"""
from __future__ import annotations

import numpy as np

from ..reference import InfiniConfig
from .harness import handed_over, make_instance, round_to, run_impl, run_reference
from ..reference.tolerances import GRAD_TOLERANCES, OUTPUT_TOLERANCES, STATE_TOLERANCES, compare, tolerance_for


class Session:
    """``run``/``ref``/``assert_close`` bound to one implementation, config and dtype."""

    def __init__(self, impl: str, config: InfiniConfig, dtype: str = "float32"):
        from .contract import load_impl

        self.impl = load_impl(impl) if isinstance(impl, str) else impl
        self.config, self.dtype = config, dtype

    def make(self):
        return make_instance(self.impl, self.config, self.dtype)

    def run(self, params, x, split, instance=None):
        """The implementation's Run (y, per-call canonical states when it declares them)."""
        want = "canonical_state" in self.impl.capabilities
        return run_impl(self.impl, self.config, params, x, list(split), self.dtype, want, instance)

    def ref(self, params, x, split):
        return run_reference(self.config, params, x, list(split), self.dtype)

    def grad(self, params, x, dy):
        p = {k: handed_over(v, self.dtype) for k, v in params.items()}
        return self.make().grad(p, handed_over(x, self.dtype), handed_over(dy, self.dtype))

    def oracle_grads(self, params, x, dy):
        from .properties.gradients import oracle_grads

        return oracle_grads(self.config, {k: round_to(v, self.dtype) for k, v in params.items()},
                            round_to(x, self.dtype), round_to(dy, self.dtype))

    def check_gradients(self, params, x, dy, seed: int = 0):
        """The gradients property on one example: grad vs central differences of the implementation's forward."""
        from .properties.gradients import directional, implementation_grads

        p = {k: round_to(v, self.dtype) for k, v in params.items()}
        x, dy = round_to(x, self.dtype), round_to(dy, self.dtype)
        grads = implementation_grads(self.impl, self.config, self.dtype, p, x, dy)
        for name, an, fd, allowed in directional(self.impl, self.config, self.dtype, p, x, dy, grads, seed):
            print(f"d/d{name}: grad {an:.6g}, central differences {fd:.6g}, allowed error {allowed:.3g}")
            assert abs(an - fd) <= allowed, f"d/d{name}: grad {an:.6g} != central differences {fd:.6g}"

    def assert_close(self, actual, expected, kind: str = "output"):
        table = {"output": OUTPUT_TOLERANCES, "state": STATE_TOLERANCES, "grad": GRAD_TOLERANCES}[kind]
        result = compare(kind, np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                         tolerance_for(self.dtype, table))
        print(result.message())
        assert result.ok, result.message()


def repro_code(example, impl_spec: str, settings, prop_name: str) -> str:
    """A few lines of Python that rebuild ``example`` and re-run the failed comparison."""
    c = example.config
    profile = ",".join(f"{k}={v}" for k, v in settings.profile.items())
    lines = [
        f"# {prop_name}: dtype {settings.dtype}, profile {profile}",
        "import numpy as np",
        "from infini_attention.reference import InfiniConfig",
        "from infini_attention.conformance.strategies import params_from_seed, x_from_seed",
        "from infini_attention.conformance.transforms import *  # head_permutation, gate_limit, ...",
        "from infini_attention.conformance.repro import Session",
        f"config = InfiniConfig(**{_config_literal(c)})",
        f"B, T, split = {example.B}, {example.T}, {list(example.split)!r}",
        f"params = params_from_seed(config, {example.param_seed})",
        f"x = x_from_seed(config, B, T, {example.x_seed})",
        *example.edits,
        f"s = Session({impl_spec!r}, config, {settings.dtype!r})",
        "run, ref, make, assert_close = s.run, s.ref, s.make, s.assert_close",
        *example.checks,
    ]
    return "\n".join(lines)


def _config_literal(config: InfiniConfig) -> str:
    defaults = InfiniConfig(1, 1, 1, 1, 1, 1).to_dict()
    required = ("d_model", "n_heads", "n_kv_heads", "d_key", "d_value", "segment_len")
    items = [(k, v) for k, v in config.to_dict().items() if k in required or v != defaults[k]]
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in items) + "}"

"""Adapter for the NumPy reference itself (``--impl infini_attention.conformance.adapters.reference:make``).

The suite's control: it must pass every property it declares. It computes in float64 whatever
dtype it is handed and returns y in the input array's dtype.
"""
from __future__ import annotations

import numpy as np

from ... import reference as R


class ReferenceImpl:
    capabilities = {"delta", "gqa", "rope", "chunked", "canonical_state",
                    "float64", "float32", "bfloat16", "float16"}

    def __init__(self, config: R.InfiniConfig, dtype: str = "float64"):
        self.config = config

    def forward(self, params, x, state=None):
        y, new_state = R.forward(self.config, params, x, state)
        return y.astype(np.asarray(x).dtype), new_state  # new_state.M, new_state.z: canonical (SPEC.md §4.2)


def make(config: R.InfiniConfig, dtype: str = "float64") -> ReferenceImpl:
    return ReferenceImpl(config, dtype)


make.capabilities = ReferenceImpl.capabilities

"""The executable specification of Infini-attention: pure NumPy, float64 (see SPEC.md)."""
from . import equations
from .config import FIRST_SEGMENT, GATE_ON, ROPE_STYLES, UPDATES, InfiniConfig, LMConfig
from .layer import forward, init_params
from .lm import lm_forward, lm_init_params, lm_param_shapes
from .state import InfiniState, init_state
from .validate import param_shapes

SPEC_VERSION = "1.0"

__all__ = [
    "SPEC_VERSION", "InfiniConfig", "LMConfig", "InfiniState", "forward", "init_params", "init_state",
    "lm_forward", "lm_init_params", "lm_param_shapes", "param_shapes", "equations",
    "UPDATES", "ROPE_STYLES", "GATE_ON", "FIRST_SEGMENT",
]

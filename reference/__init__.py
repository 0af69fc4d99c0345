"""The executable specification of Infini-attention: pure NumPy, float64 (see SPEC.md).

Besides one function per equation (``equations``), this package holds everything else the spec
defines and the other packages consume: configs (§2, §9), parameter and state shapes (§3, §4.2),
the stream loop (§4.3: ``pieces``, ``run_split``), input checks (§12), the tolerance table (§11:
``tolerances``) and the ONNX I/O format (§14.1: ``io_spec``). It imports neither torch nor onnx.
"""
from . import equations
from .config import (DEFAULT_PROFILE, FIRST_SEGMENT, GATE_ON, PROFILE_CHOICES, ROPE_STYLES, UPDATES, InfiniConfig,
                     LMConfig, ModelConfig, config_from_dict)
from .errors import UsageError
from .layer import forward, init_params
from .lm import lm_forward, lm_init_params, model_forward, model_init_params
from .shapes import ATTN_PARAMS, layer_param_shapes, lm_param_shapes, param_shapes, state_shapes
from .state import InfiniState, init_state
from .streaming import pieces, run_split

SPEC_VERSION = "1.0"

__all__ = [
    "SPEC_VERSION", "InfiniConfig", "LMConfig", "ModelConfig", "InfiniState", "forward", "init_params", "init_state",
    "lm_forward", "lm_init_params", "model_forward", "model_init_params", "lm_param_shapes", "param_shapes", "layer_param_shapes", "state_shapes",
    "equations", "pieces", "run_split", "config_from_dict", "ATTN_PARAMS",
    "UPDATES", "ROPE_STYLES", "GATE_ON", "FIRST_SEGMENT", "PROFILE_CHOICES", "DEFAULT_PROFILE",
    "UsageError",
]

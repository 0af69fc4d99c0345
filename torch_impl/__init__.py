"""PyTorch implementation of Infini-attention (matches infini_attention.reference, SPEC.md)."""
from .layer import PARAM_NAMES, InfiniAttention
from .lm import InfiniTransformerLM, SwiGLU, rms_norm
from .state import TorchInfiniState
from .streaming import run_chunks

__all__ = ["InfiniAttention", "InfiniTransformerLM", "TorchInfiniState", "SwiGLU", "rms_norm", "run_chunks",
           "PARAM_NAMES"]

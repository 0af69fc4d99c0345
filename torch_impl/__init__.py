"""PyTorch implementation of Infini-attention (matches infini_attention.reference, SPEC.md).

``layer.py`` is the fast, trainable layer; ``naive.py`` the plain per-segment form it is tested against
(and that the ONNX export traces); ``streaming.py`` the protocol shared by the layer and the LM, ``protocol.py``
checking that any other model follows it (what ``infini export --module`` exports);
``pretrained.py`` safetensors checkpoints (``save_pretrained`` / ``from_pretrained``); ``hf.py`` Hugging Face
Llama-family models converted (``from_hf``).
"""
from .hf import from_hf, lm_from_hf
from .layer import PARAM_NAMES, InfiniAttention
from .lm import InfiniTransformerLM, SwiGLU, rms_norm
from .protocol import model_config
from .state import TorchInfiniState
from .streaming import attention_layers, model_from_numpy, model_step, piece_mode, run_chunks

__all__ = ["model_config", "InfiniAttention", "InfiniTransformerLM", "TorchInfiniState", "SwiGLU", "rms_norm", "run_chunks",
           "PARAM_NAMES", "attention_layers", "model_from_numpy", "model_step", "piece_mode", "from_hf", "lm_from_hf"]

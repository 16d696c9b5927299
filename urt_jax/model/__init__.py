"""Qwen2.5-VL in Flax NNX and its Hugging Face conversion."""

from urt_jax.model.config import ConfigError, Qwen25VLConfig, TextConfig, VisionConfig
from urt_jax.model.inputs import InputError, ModelInputs, prepare_inputs
from urt_jax.model.layers import DTypePolicy
from urt_jax.model.qwen2_5_vl import Qwen25VL

__all__ = [
    "ConfigError",
    "DTypePolicy",
    "InputError",
    "ModelInputs",
    "Qwen25VL",
    "Qwen25VLConfig",
    "TextConfig",
    "VisionConfig",
    "prepare_inputs",
]

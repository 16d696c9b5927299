"""urt-jax: UnifiedReward-Think style multimodal chain-of-thought reward models on JAX."""

from __future__ import annotations

__version__ = "0.1.0"


def from_pretrained(model_dir, dtype=None, mesh=None, remat: str = "none", kernels: str = "auto"):
    """Loads a Hugging Face Qwen2.5-VL directory as a flax.nnx model (see urt_jax.model.hf)."""
    from urt_jax.model.hf import from_pretrained as _load

    return _load(model_dir, dtype=dtype, mesh=mesh, remat=remat, kernels=kernels)


def save_pretrained(model, out_dir, **kwargs) -> None:
    """Writes a urt_jax model as a Hugging Face directory (see urt_jax.model.hf)."""
    from urt_jax.model.hf import save_pretrained as _save

    _save(model, out_dir, **kwargs)


def __getattr__(name: str):
    if name == "Processor":  # imported on first use: it pulls in transformers' tokenizers
        from urt_jax.data.vl_processor import Processor

        return Processor
    raise AttributeError(f"module 'urt_jax' has no attribute {name!r}")


__all__ = ["Processor", "__version__", "from_pretrained", "save_pretrained"]

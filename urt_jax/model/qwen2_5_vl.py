"""Qwen2.5-VL for conditional generation: vision tower + Qwen2 decoder + LM head, in Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from urt_jax.model.attention import resolve_kernels
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.inputs import ModelInputs, prepare_inputs
from urt_jax.model.layers import Dense, DTypePolicy
from urt_jax.model.remat import check_remat
from urt_jax.model.rope import mrope_cos_sin
from urt_jax.model.text import TextModel
from urt_jax.model.vision import VisionTower


class Qwen25VL(nnx.Module):
    """Qwen2.5-VL with the parameter names of transformers' Qwen2_5_VLForConditionalGeneration.

    Call it like the HF model with the processor's outputs (host-side preparation, then compute),
    or, inside jit, call ``forward`` on ``ModelInputs`` from ``prepare_inputs``.
    """

    def __init__(
        self,
        config: Qwen25VLConfig,
        *,
        dtype: str | DTypePolicy = "float32",
        remat: str = "none",
        kernels: str = "auto",
        rngs: nnx.Rngs | None = None,
    ):
        config.validate()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.policy = DTypePolicy.parse(dtype)
        check_remat(remat)
        self.kernels = resolve_kernels(kernels)  # the attention implementation (model.attention)
        self.visual = VisionTower(config.vision, self.policy, rngs, remat, self.kernels)
        self.language_model = TextModel(config.text, self.policy, rngs, remat, self.kernels)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Dense(
                config.text.hidden_size,
                config.text.vocab_size,
                use_bias=False,
                axes=("embed", "vocab"),
                policy=self.policy,
                rngs=rngs,
                kernels=self.kernels,
            )
        )
        self.source_dir: str | None = None  # set by from_pretrained; save_pretrained copies files

    @property
    def cpu_layout(self) -> bool:
        """Whether the model is built for XLA:CPU, whose layout workarounds it then takes
        (``urt_jax.model.kernels``); never on TPU or GPU."""
        return self.kernels == "cpu"

    # ---------------------------------------------------------------- jittable pieces
    def vision_features(self, inputs: ModelInputs) -> jax.Array:
        """Merged vision features per media row, [B, Np / merge_unit, D] (B the vision arrays'
        rows), in placeholder order.

        The rows are flattened into one sequence for the tower (segment indices are offset per
        row, so attention never crosses rows), which keeps the batch axis shardable.
        """
        b, n, p = inputs.pixel_values.shape
        offsets = (jnp.arange(b, dtype=jnp.int32) * n)[:, None, None]

        def flat(index):
            shifted = jnp.where(index < n, index + offsets, b * n)
            return shifted.reshape(-1, index.shape[-1])

        feats = self.visual(
            inputs.pixel_values.reshape(b * n, p),
            inputs.rot_pos.reshape(b * n, 2),
            flat(inputs.window_index),
            flat(inputs.frame_index),
        )
        return feats.reshape(b, n // self.config.vision.merge_unit, -1)

    def embed(self, inputs: ModelInputs) -> jax.Array:
        """Token embeddings with vision features written at the placeholder positions."""
        x = self.language_model.embed_tokens(inputs.input_ids)
        if inputs.has_vision:
            feats = self.vision_features(inputs).astype(x.dtype)
            if inputs.media_row is not None:  # rows sharing media: each reads its media row's
                feats = jnp.take(feats, inputs.media_row, axis=0)
            idx = inputs.vision_token_index
            gathered = jnp.take_along_axis(feats, jnp.maximum(idx, 0)[..., None], axis=1)
            x = jnp.where((idx >= 0)[..., None], gathered, x)
        return x

    def hidden_states(self, inputs: ModelInputs) -> jax.Array:
        """Final-norm hidden states [B, T, D]."""
        x = self.embed(inputs)
        cos, sin = mrope_cos_sin(inputs.position_ids, self.config, x.dtype)
        return self.language_model(x, cos, sin, inputs.attention_mask.astype(bool))

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:
            return self.language_model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def output_kernel(self) -> jax.Array:
        """The LM head as a [D, V] matrix in the compute dtype (the embedding's transpose when
        tied): ``logits(h) == h @ output_kernel()``."""
        if self.lm_head is None:
            embed = self.language_model.embed_tokens
            return embed.embedding[...].astype(embed.policy.compute_dtype).T
        return self.lm_head.kernel[...].astype(self.lm_head.policy.compute_dtype)

    def forward(self, inputs: ModelInputs) -> jax.Array:
        """Logits [B, T, V] from prepared inputs (jit-friendly)."""
        return self.logits(self.hidden_states(inputs))

    # ---------------------------------------------------------------- HF-style call
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        pixel_values_videos=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
    ) -> jax.Array:
        """Logits [B, T, V] from the HF processor's outputs (numpy, jax or torch arrays)."""
        inputs, _ = prepare_inputs(
            self.config,
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            pixel_values_videos,
            video_grid_thw,
            second_per_grid_ts,
        )
        return self.forward(jax.tree.map(jnp.asarray, inputs))

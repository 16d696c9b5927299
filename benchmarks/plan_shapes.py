"""Shapes of the 7B plan: meshes, reduced-depth configs, and abstract sharded batches built by
the project's own host-side code (collate for SFT, the sampler's prompt buckets for GRPO).

Each row holds two images of the pod config's ``max_pixels`` (384 x 384 resized by
smart_resize to 364 x 364: a 26 x 26 patch grid, 169 placeholder tokens each), as a pairwise
image-generation judgement of UnifiedReward-Think does.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from urt_jax.config import DataSection, GRPOSection
from urt_jax.data.batching import Batch, Buckets, collate, pow2_at_least
from urt_jax.data.processor import smart_resize
from urt_jax.generate.sampler import prompt_bucket
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.inputs import BATCH_AXIS, VISION_FIELDS, ModelInputs, prepare_inputs
from urt_jax.sharding.mesh import batch_sharding, batch_ways
from urt_jax.train.grpo import MicroBatch, media_rows_per_part

# name -> (fsdp, tensor); data = 1. "fsdp4" uses 4 of the 8 fake devices: a v5p-8 slice is
# 4 chips, and JAX sees each v5p chip (2 TensorCores, megacore) as one device.
MESHES = {"fsdp8": (8, 1), "fsdp4_tp2": (4, 2), "fsdp4": (4, 1)}
IMAGE_SIDE = 384  # pixels, before smart_resize
IMAGES_PER_ROW = 2
PROMPT_TEXT_TOKENS = 400  # instruction, captions and chat markup of a GRPO prompt (assumed)


def reduced_config(config: Qwen25VLConfig, text_layers: int, vision_blocks: int):
    """The same widths with fewer decoder layers and vision blocks. The full-attention vision
    blocks keep their period (every 8th: 7, 15, 23, 31), so depth should be a multiple of 8."""
    period = config.vision.depth // max(len(config.vision.fullatt_block_indexes), 1)
    full = tuple(i for i in range(period - 1, vision_blocks, period))
    text = dataclasses.replace(config.text, num_hidden_layers=text_layers)
    vision = dataclasses.replace(
        config.vision, depth=vision_blocks, fullatt_block_indexes=full or (vision_blocks - 1,)
    )
    return dataclasses.replace(config, text=text, vision=vision)


def image_grid(config: Qwen25VLConfig, data: DataSection) -> tuple[int, int, int]:
    v = config.vision
    factor = v.patch_size * v.spatial_merge_size
    h, w = smart_resize(IMAGE_SIDE, IMAGE_SIDE, factor, data.min_pixels, data.max_pixels)
    return (1, h // v.patch_size, w // v.patch_size)


def _row_ids(config: Qwen25VLConfig, length: int, grid) -> np.ndarray:
    """One row of ``length`` tokens: text, then the images' placeholders, then text."""
    n_img = int(np.prod(grid)) // config.vision.merge_unit
    image = [config.vision_start_token_id] + [config.image_token_id] * n_img
    image += [config.vision_end_token_id]
    head = [100] * 16
    ids = head + image * IMAGES_PER_ROW
    if len(ids) > length:
        raise ValueError(f"{length} tokens cannot hold {IMAGES_PER_ROW} images of {n_img} tokens")
    return np.asarray(ids + [101] * (length - len(ids)), np.int32)


def _abstract(inputs: ModelInputs, rows: int, mesh: Mesh, media_rows: int | None = None):
    """ModelInputs of ShapeDtypeStructs: the batch axis set to ``rows`` (the vision arrays' to
    ``media_rows`` when given: rows sharing media), split over data x fsdp."""

    def one(name, a, axis):
        shape = list(np.shape(a))
        shape[axis] = media_rows if media_rows and name in VISION_FIELDS else rows
        sharding = batch_sharding(mesh, len(shape), axis)
        return jax.ShapeDtypeStruct(tuple(shape), np.asarray(a).dtype, sharding=sharding)

    fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    if media_rows:
        fields["media_row"] = np.zeros((1,), np.int32)
    return ModelInputs(
        **{n: None if a is None else one(n, a, BATCH_AXIS[n]) for n, a in fields.items()}
    )


def sft_batch(config: Qwen25VLConfig, rows: int, length: int, data: DataSection) -> Batch:
    """An SFT micro-batch of ``rows`` full rows in the ``length`` bucket, collated by the data
    pipeline's own code (power-of-two vision and target buckets); the reply (the target tokens)
    is the second half of every row."""
    grid = image_grid(config, data)
    n = int(np.prod(grid))
    example = {
        "input_ids": _row_ids(config, length, grid),
        "loss_mask": np.arange(length) >= length // 2,
        "pixel_values": np.zeros((n * IMAGES_PER_ROW, config.vision.patch_dim), np.float32),
        "image_grid_thw": np.asarray([grid] * IMAGES_PER_ROW, np.int64),
    }
    return collate([example] * rows, config, Buckets(lengths=tuple(data.bucket_lengths)))


def grpo_micro_batch(
    config: Qwen25VLConfig, mesh: Mesh, g: GRPOSection, data: DataSection
) -> tuple[MicroBatch, int, int]:
    """(micro-batch, P, N) of a GRPO update: ``grpo.micro_batch_rows`` rows (all
    prompts_per_step x G rows when unset) of [prompt | completion], the prompt left-padded to the
    sampler's bucket P, N = max_new_tokens (all rows full), with their prompts' media once."""
    grid = image_grid(config, data)
    n_img = int(np.prod(grid)) // config.vision.merge_unit
    prompt_len = PROMPT_TEXT_TOKENS + IMAGES_PER_ROW * (n_img + 2)
    p = prompt_bucket(prompt_len)
    n = g.max_new_tokens
    ids = np.zeros((1, p + n), np.int64)
    mask = np.zeros((1, p + n), np.int64)
    ids[0, p - prompt_len :] = _row_ids(config, prompt_len + n, grid)
    mask[0, p - prompt_len :] = 1
    pixels = np.zeros((int(np.prod(grid)) * IMAGES_PER_ROW, config.vision.patch_dim), np.float32)
    inputs, _ = prepare_inputs(
        config,
        ids,
        mask,
        pixels,
        np.asarray([grid] * IMAGES_PER_ROW, np.int64),
        round_up=lambda kind, k: pow2_at_least(k, 1),
    )
    total = g.prompts_per_step * g.num_generations
    rows = g.micro_batch_rows or total
    assert set(BATCH_AXIS) == {f.name for f in dataclasses.fields(ModelInputs)}
    # each prompt's media once (grpo.share_media), split over the mesh like the trainer's
    media_row = np.arange(total) // g.num_generations
    parts = [np.arange(lo, lo + rows) for lo in range(0, total, rows)]
    media = media_rows_per_part(media_row, parts, batch_ways(mesh))
    per_token = jax.ShapeDtypeStruct((rows, n), np.float32, sharding=batch_sharding(mesh, 2, 0))
    micro = MicroBatch(
        _abstract(inputs, rows, mesh, media),
        per_token,
        per_token,
        jax.ShapeDtypeStruct((rows,), np.float32, sharding=batch_sharding(mesh, 1, 0)),
    )
    return micro, p, n


def sampling_prompts(config: Qwen25VLConfig, prompts: int, data: DataSection) -> dict:
    """The sampler's batch of a GRPO step (host arrays, as the processor gives them): ``prompts``
    rows of ``PROMPT_TEXT_TOKENS`` text tokens and two images each."""
    grid = image_grid(config, data)
    n_img = int(np.prod(grid)) // config.vision.merge_unit
    length = PROMPT_TEXT_TOKENS + IMAGES_PER_ROW * (n_img + 2)
    patches = int(np.prod(grid)) * IMAGES_PER_ROW * prompts
    return {
        "input_ids": np.stack([_row_ids(config, length, grid)] * prompts).astype(np.int64),
        "attention_mask": np.ones((prompts, length), np.int64),
        "pixel_values": np.zeros((patches, config.vision.patch_dim), np.float32),
        "image_grid_thw": np.asarray([grid] * IMAGES_PER_ROW * prompts, np.int64),
    }

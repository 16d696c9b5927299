"""Host-side preparation and validation of model inputs.

The HF processor's outputs (input_ids, attention_mask, pixel_values, image_grid_thw,
pixel_values_videos, video_grid_thw, second_per_grid_ts) are checked against each other and turned
into ``ModelInputs``: fixed-shape arrays (M-RoPE positions, the vision attention layout, the map
from placeholder tokens to vision features) that jitted code consumes without any data-dependent
shape. Every inconsistency is reported here, before any compute.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.rope import get_rope_index
from urt_jax.model.vision_layout import check_grids, merged_token_counts, vision_layout


class InputError(ValueError):
    """Inputs that contradict each other (pixel rows vs grids, placeholders vs grids, shapes)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModelInputs:
    input_ids: np.ndarray | jax.Array  # [B, T] int32
    attention_mask: np.ndarray | jax.Array  # [B, T] int32, 1 = real token
    position_ids: np.ndarray | jax.Array  # [3, B, T] int32 M-RoPE positions
    vision_token_index: np.ndarray | jax.Array  # [B, T] int32 index into vision features, or -1
    pixel_values: np.ndarray | jax.Array | None = None  # [Np, C*T*p*p] images then videos
    rot_pos: np.ndarray | jax.Array | None = None  # [Np, 2]
    window_index: np.ndarray | jax.Array | None = None  # [Sw, Lw]
    frame_index: np.ndarray | jax.Array | None = None  # [Sf, Lf]

    @property
    def has_vision(self) -> bool:
        return self.pixel_values is not None


def _as_np(x, name: str, ndim: int | None = None, dtype=None) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    a = np.asarray(x)
    if ndim is not None and a.ndim != ndim:
        raise InputError(f"{name}: expected {ndim} dimensions, found shape {a.shape}")
    return a.astype(dtype) if dtype is not None else a


def _check_modality(
    config: Qwen25VLConfig,
    input_ids: np.ndarray,
    pixels: np.ndarray | None,
    grid: np.ndarray | None,
    token_id: int,
    names: tuple[str, str, str],
) -> int:
    """Checks pixels vs grid vs placeholder count; returns the number of placeholder tokens."""
    pix_name, grid_name, what = names
    n_tokens = int(np.sum(input_ids == token_id))
    if (pixels is None) != (grid is None):
        raise InputError(f"{pix_name} and {grid_name} must be given together")
    if pixels is None:
        if n_tokens:
            raise InputError(
                f"input_ids contains {n_tokens} {what} placeholder tokens "
                f"(id {token_id}) but no {pix_name} were given"
            )
        return 0
    try:
        check_grids(grid, config.vision, grid_name)
    except ValueError as e:
        raise InputError(str(e)) from None
    rows = int(np.sum(np.prod(grid, axis=1)))
    if pixels.ndim != 2 or pixels.shape[1] != config.vision.patch_dim:
        raise InputError(
            f"{pix_name}: expected shape [num_patches, {config.vision.patch_dim}] "
            f"(C*T*patch*patch), found {pixels.shape}"
        )
    if pixels.shape[0] != rows:
        raise InputError(
            f"{pix_name} has {pixels.shape[0]} rows but {grid_name} "
            f"{grid.tolist()} describes {rows} patches (sum of t*h*w)"
        )
    expected = int(np.sum(merged_token_counts(grid, config.vision)))
    if n_tokens != expected:
        raise InputError(
            f"input_ids contains {n_tokens} {what} placeholder tokens (id {token_id}) "
            f"but {grid_name} {grid.tolist()} needs {expected} "
            f"(t*h*w/{config.vision.merge_unit} per {what})"
        )
    return n_tokens


def prepare_inputs(
    config: Qwen25VLConfig,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    *,
    pad_patches_to: int | None = None,
    pad_windows_to: int | None = None,
    pad_frames_to: int | None = None,
    pad_frame_len_to: int | None = None,
) -> tuple[ModelInputs, np.ndarray]:
    """Validates HF-processor style inputs and returns (ModelInputs, rope_deltas [B])."""
    ids = _as_np(input_ids, "input_ids", 2, np.int64)
    mask = (
        np.ones_like(ids)
        if attention_mask is None
        else _as_np(attention_mask, "attention_mask", 2, np.int64)
    )
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise InputError("attention_mask must contain only 0 and 1")
    vocab = config.text.vocab_size
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise InputError(
            f"input_ids must be in [0, {vocab}), found values in [{ids.min()}, {ids.max()}]"
        )
    pv = _as_np(pixel_values, "pixel_values", None, np.float32)
    ig = _as_np(image_grid_thw, "image_grid_thw", None, np.int64)
    pvv = _as_np(pixel_values_videos, "pixel_values_videos", None, np.float32)
    vg = _as_np(video_grid_thw, "video_grid_thw", None, np.int64)
    spg = _as_np(second_per_grid_ts, "second_per_grid_ts", None, np.float32)
    real = mask.astype(bool)
    n_img = _check_modality(
        config,
        np.where(real, ids, -1),
        pv,
        ig,
        config.image_token_id,
        ("pixel_values", "image_grid_thw", "image"),
    )
    n_vid = _check_modality(
        config,
        np.where(real, ids, -1),
        pvv,
        vg,
        config.video_token_id,
        ("pixel_values_videos", "video_grid_thw", "video"),
    )
    if spg is not None:
        spg = spg.reshape(-1)
        if vg is None or spg.shape[0] != vg.shape[0]:
            raise InputError(
                f"second_per_grid_ts has {spg.shape[0]} entries but there are "
                f"{0 if vg is None else vg.shape[0]} videos"
            )
    try:
        positions, deltas = get_rope_index(ids, config, mask, ig, vg, spg)
    except ValueError as e:
        raise InputError(str(e)) from None

    # Placeholder token -> row of the merged vision features (images first, then videos), in
    # row-major order over the batch like transformers' masked_scatter.
    token_index = np.full(ids.shape, -1, np.int64)
    img_pos = real & (ids == config.image_token_id)
    vid_pos = real & (ids == config.video_token_id)
    token_index[img_pos] = np.arange(n_img)
    token_index[vid_pos] = n_img + np.arange(n_vid)

    inputs = ModelInputs(
        ids.astype(np.int32),
        mask.astype(np.int32),
        positions.astype(np.int32),
        token_index.astype(np.int32),
    )
    grids = [g for g in (ig, vg) if g is not None]
    if grids:
        pixels = np.concatenate([p for p in (pv, pvv) if p is not None])
        grid = np.concatenate(grids)
        layout = vision_layout(
            grid,
            config.vision,
            pad_patches_to=pad_patches_to,
            pad_windows_to=pad_windows_to,
            pad_frames_to=pad_frames_to,
            pad_frame_len_to=pad_frame_len_to,
        )
        if layout.padded_patches > pixels.shape[0]:
            pad = np.zeros((layout.padded_patches - pixels.shape[0], pixels.shape[1]), np.float32)
            pixels = np.concatenate([pixels, pad])
        inputs.pixel_values = pixels
        inputs.rot_pos = layout.rot_pos
        inputs.window_index = layout.window_index
        inputs.frame_index = layout.frame_index
    return inputs, deltas

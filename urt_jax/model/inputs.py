"""Host-side preparation and validation of model inputs.

The HF processor's outputs (input_ids, attention_mask, pixel_values, image_grid_thw,
pixel_values_videos, video_grid_thw, second_per_grid_ts) are checked against each other and turned
into ``ModelInputs``: fixed-shape arrays (M-RoPE positions, the vision attention layout, the map
from placeholder tokens to vision features) that jitted code consumes without any data-dependent
shape. Every inconsistency is reported here, before any compute.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import jax
import numpy as np

from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.rope import IMAGE, TEXT, VIDEO, get_rope_index, token_types
from urt_jax.model.vision_layout import check_grids, merged_token_counts, vision_layout


class InputError(ValueError):
    """Inputs that contradict each other (pixel rows vs grids, placeholders vs grids, shapes)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModelInputs:
    input_ids: np.ndarray | jax.Array  # [B, T] int32
    attention_mask: np.ndarray | jax.Array  # [B, T] int32, 1 = real token
    position_ids: np.ndarray | jax.Array  # [3, B, T] int32 M-RoPE positions
    vision_token_index: np.ndarray | jax.Array  # [B, T] int32 index into the row's features or -1
    # Per row: that row's images and videos in placeholder order, patches padded to Np.
    pixel_values: np.ndarray | jax.Array | None = None  # [B, Np, C*T*p*p]
    rot_pos: np.ndarray | jax.Array | None = None  # [B, Np, 2]
    window_index: np.ndarray | jax.Array | None = None  # [B, Sw, Lw] row-local, pad = Np
    frame_index: np.ndarray | jax.Array | None = None  # [B, Sf, Lf] row-local, pad = Np
    # Rows that share media (GRPO's G completions of a prompt): the vision arrays above then
    # hold M media rows, and row b reads the features of media row media_row[b].
    media_row: np.ndarray | jax.Array | None = None  # [B] int32

    @property
    def has_vision(self) -> bool:
        return self.pixel_values is not None

    def map_with_batch_axis(self, fn: Callable[[object, int], object]) -> ModelInputs:
        """A ModelInputs of fn(array, index of its batch axis) over the fields that are set."""
        return ModelInputs(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else fn(getattr(self, f.name), BATCH_AXIS[f.name])
                for f in dataclasses.fields(self)
            }
        )


# Which axis of each ModelInputs field is the batch (sharded over data x fsdp).
BATCH_AXIS = {
    "input_ids": 0,
    "attention_mask": 0,
    "position_ids": 1,
    "vision_token_index": 0,
    "pixel_values": 0,
    "rot_pos": 0,
    "window_index": 0,
    "frame_index": 0,
    "media_row": 0,
}
VISION_FIELDS = ("pixel_values", "rot_pos", "window_index", "frame_index")


def share_media(inputs: ModelInputs, group: int) -> ModelInputs:
    """Inputs whose rows come in consecutive groups of ``group`` with the same media (the same
    prompt's completions) with the vision arrays kept once per group: the vision tower then
    encodes each group's media once, and every row reads its group's features."""
    rows = inputs.input_ids.shape[0]
    if not inputs.has_vision or group == 1:
        return inputs
    if rows % group or inputs.media_row is not None:
        raise ValueError(f"{rows} rows do not come in groups of {group} with their own media")
    firsts = np.arange(0, rows, group)
    fields = {name: np.asarray(getattr(inputs, name))[firsts] for name in VISION_FIELDS}
    for name, kept in fields.items():  # every row of a group must hold its group's media
        repeated = np.repeat(kept, group, axis=0)
        if not np.array_equal(repeated, np.asarray(getattr(inputs, name))):
            raise ValueError(f"share_media: the rows of a group differ in {name}")
    media_row = (np.arange(rows) // group).astype(np.int32)
    return dataclasses.replace(inputs, **fields, media_row=media_row)


def select_rows(
    inputs: ModelInputs, rows: np.ndarray, media_rows: int | None = None
) -> ModelInputs:
    """``inputs`` of the given rows. With shared media (``media_row``), the media those rows
    read, in order, the last repeated at the end to ``media_rows`` (so that every part of a
    batch has one shape, divisible over the mesh), and ``media_row`` renumbered to match."""
    rows = np.asarray(rows)
    if inputs.media_row is None:
        return inputs.map_with_batch_axis(lambda a, axis: np.take(np.asarray(a), rows, axis))
    wanted = np.asarray(inputs.media_row)[rows]
    media, local = np.unique(wanted, return_inverse=True)
    count = media_rows or len(media)
    if count < len(media):
        raise ValueError(f"rows read {len(media)} media rows, more than media_rows={count}")
    media = np.concatenate([media, np.full(count - len(media), media[-1])])
    out = {
        name: np.asarray(getattr(inputs, name))[media if name in VISION_FIELDS else rows]
        for name in BATCH_AXIS
        if name != "media_row" and name != "position_ids"
    }
    out["position_ids"] = np.asarray(inputs.position_ids)[:, rows]
    return ModelInputs(**out, media_row=local.astype(np.int32))


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


def _row_media(
    ids: np.ndarray, real: np.ndarray, config: Qwen25VLConfig, grids: dict, pixels: dict
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per row, its (grid, pixel rows) in placeholder order: images and videos are consumed in
    row-major order over the batch, as transformers' masked_scatter does."""
    offsets = {IMAGE: 0, VIDEO: 0}
    counters = {IMAGE: 0, VIDEO: 0}
    rows = []
    types = token_types(ids, config)
    for b in range(ids.shape[0]):
        media = []
        for kind, _ in itertools.groupby(types[b][real[b]].tolist()):
            if kind == TEXT:
                continue
            grid = grids[kind][counters[kind]]
            n = int(np.prod(grid))
            media.append((grid, pixels[kind][offsets[kind] : offsets[kind] + n]))
            counters[kind] += 1
            offsets[kind] += n
        rows.append(media)
    return rows


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
    round_up: Callable[[str, int], int] | None = None,
) -> tuple[ModelInputs, np.ndarray]:
    """Validates HF-processor style inputs and returns (ModelInputs, rope_deltas [B]).

    Vision inputs are laid out per row ([B, patches, ...], indices local to the row), so every
    array of ModelInputs has the batch as a shardable axis. ``round_up(kind, n)`` picks the padded
    size for kind in {"patches", "windows", "frames", "frame_len"} (default: the batch maximum);
    use power-of-two buckets to bound the number of compiled shapes.
    """
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
    image_pixels = _as_np(pixel_values, "pixel_values", None, np.float32)
    image_grids = _as_np(image_grid_thw, "image_grid_thw", None, np.int64)
    video_pixels = _as_np(pixel_values_videos, "pixel_values_videos", None, np.float32)
    video_grids = _as_np(video_grid_thw, "video_grid_thw", None, np.int64)
    seconds_per_grid = _as_np(second_per_grid_ts, "second_per_grid_ts", None, np.float32)
    real = mask.astype(bool)
    masked_ids = np.where(real, ids, -1)
    _check_modality(
        config,
        masked_ids,
        image_pixels,
        image_grids,
        config.image_token_id,
        ("pixel_values", "image_grid_thw", "image"),
    )
    _check_modality(
        config,
        masked_ids,
        video_pixels,
        video_grids,
        config.video_token_id,
        ("pixel_values_videos", "video_grid_thw", "video"),
    )
    if seconds_per_grid is not None:
        seconds_per_grid = seconds_per_grid.reshape(-1)
        if video_grids is None or seconds_per_grid.shape[0] != video_grids.shape[0]:
            raise InputError(
                f"second_per_grid_ts has {seconds_per_grid.shape[0]} entries but there are "
                f"{0 if video_grids is None else video_grids.shape[0]} videos"
            )
    try:
        positions, deltas = get_rope_index(
            ids, config, mask, image_grids, video_grids, seconds_per_grid
        )
    except ValueError as e:
        raise InputError(str(e)) from None

    # Placeholder token -> index into its row's merged vision features, in token order.
    vision = real & ((ids == config.image_token_id) | (ids == config.video_token_id))
    token_index = np.where(vision, np.cumsum(vision, axis=1) - 1, -1)
    inputs = ModelInputs(
        ids.astype(np.int32),
        mask.astype(np.int32),
        positions.astype(np.int32),
        token_index.astype(np.int32),
    )
    if image_grids is None and video_grids is None:
        return inputs, deltas

    rows = _row_media(
        ids,
        real,
        config,
        {IMAGE: image_grids, VIDEO: video_grids},
        {IMAGE: image_pixels, VIDEO: video_pixels},
    )
    v = config.vision
    need = {"patches": 0, "windows": 0, "frames": 0, "frame_len": 1}
    for media in rows:
        if not media:
            continue
        grid = np.stack([g for g, _ in media])
        counts = _vision_counts(grid, config)
        for k in need:
            need[k] = max(need[k], counts[k])
    rnd = round_up or (lambda kind, n: n)
    size = {k: max(int(rnd(k, n)), n) for k, n in need.items()}
    size["patches"] = -(-size["patches"] // v.merge_unit) * v.merge_unit
    size["windows"], size["frames"] = max(size["windows"], 1), max(size["frames"], 1)
    b = ids.shape[0]
    inputs.pixel_values = np.zeros((b, size["patches"], v.patch_dim), np.float32)
    inputs.rot_pos = np.zeros((b, size["patches"], 2), np.int32)
    w_len = v.window_merged**2 * v.merge_unit
    inputs.window_index = np.full((b, size["windows"], w_len), size["patches"], np.int32)
    inputs.frame_index = np.full((b, size["frames"], size["frame_len"]), size["patches"], np.int32)
    for row, media in enumerate(rows):
        if not media:
            continue
        layout = vision_layout(
            np.stack([g for g, _ in media]),
            v,
            pad_patches_to=size["patches"],
            pad_windows_to=size["windows"],
            pad_frames_to=size["frames"],
            pad_frame_len_to=size["frame_len"],
        )
        pixels = np.concatenate([p for _, p in media])
        inputs.pixel_values[row, : len(pixels)] = pixels
        inputs.rot_pos[row] = layout.rot_pos
        inputs.window_index[row] = layout.window_index
        inputs.frame_index[row] = layout.frame_index
    return inputs, deltas


def _vision_counts(grid: np.ndarray, config: Qwen25VLConfig) -> dict[str, int]:
    """What one row's media need: patches, attention windows, frames, longest frame."""
    v = config.vision
    out = {"patches": 0, "windows": 0, "frames": 0, "frame_len": 1}
    for t, h, w in grid.tolist():
        hh, ww = h // v.spatial_merge_size, w // v.spatial_merge_size
        out["patches"] += t * h * w
        out["windows"] += t * -(-hh // v.window_merged) * -(-ww // v.window_merged)
        out["frames"] += t
        out["frame_len"] = max(out["frame_len"], h * w)
    return out

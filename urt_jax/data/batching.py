"""Collating examples into fixed-shape batches: length bucketing for tokens, power-of-two buckets
for vision patches, windows and frames, and the host-side precompute (M-RoPE positions, vision
attention layout, placeholder map) so that jitted code sees a small set of shapes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.inputs import ModelInputs, prepare_inputs


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Sequence lengths to pad to (the smallest that fits), and the minimum vision buckets (per
    row: patches, attention windows, frames, longest frame; each rounded up to a power of two)."""

    lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    min_patches: int = 64
    min_windows: int = 4
    min_frames: int = 2
    min_frame_len: int = 16
    min_targets: int = 64  # target tokens per row (the reply), rounded up to a power of two

    def length(self, n: int) -> int:
        for b in sorted(self.lengths):
            if n <= b:
                return b
        raise ValueError(
            f"a sequence of {n} tokens is longer than the largest bucket {max(self.lengths)}"
        )


def pow2_at_least(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclasses.dataclass
class Batch:
    inputs: ModelInputs  # numpy; jax.tree.map(jnp.asarray, ...) before a jitted call
    loss_mask: np.ndarray  # [B, T] bool, aligned with input_ids (token t is a target)
    target_index: np.ndarray  # [B, K] int32: positions of each row's targets, padded with 0
    rope_deltas: np.ndarray  # [B]
    prompt_lengths: np.ndarray  # [B]
    verdicts: list[str]
    record_ids: list[str]


def collate(
    examples: Sequence[dict],
    config: Qwen25VLConfig,
    buckets: Buckets = Buckets(),
    pad_id: int = 0,
    padding_side: str = "right",
) -> Batch:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', found {padding_side!r}")
    length = buckets.length(max(len(e["input_ids"]) for e in examples))
    b = len(examples)
    ids = np.full((b, length), pad_id, np.int32)
    mask = np.zeros((b, length), np.int32)
    loss = np.zeros((b, length), bool)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        sl = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[i, sl] = e["input_ids"]
        mask[i, sl] = 1
        loss[i, sl] = e["loss_mask"]

    def cat(key: str) -> np.ndarray | None:
        parts = [e[key] for e in examples if key in e]
        return np.concatenate(parts) if parts else None

    image_pixels, image_grids = cat("pixel_values"), cat("image_grid_thw")
    video_pixels, video_grids = cat("pixel_values_videos"), cat("video_grid_thw")
    seconds_per_grid = cat("second_per_grid_ts")
    minimum = {
        "patches": buckets.min_patches,
        "windows": buckets.min_windows,
        "frames": buckets.min_frames,
        "frame_len": buckets.min_frame_len,
    }
    inputs, deltas = prepare_inputs(
        config,
        ids,
        mask,
        image_pixels,
        image_grids,
        video_pixels,
        video_grids,
        seconds_per_grid,
        round_up=lambda kind, n: pow2_at_least(n, minimum[kind]),
    )
    return Batch(
        inputs,
        loss,
        target_positions(loss, buckets.min_targets),
        deltas,
        np.asarray([int(e.get("prompt_length", 0)) for e in examples], np.int32),
        [str(e.get("verdict", "")) for e in examples],
        [str(e.get("record_id", "")) for e in examples],
    )


def target_positions(loss_mask: np.ndarray, minimum: int) -> np.ndarray:
    """[B, K] positions of the True entries of each row of loss_mask [B, T], in order, padded with
    0; K is the most per row rounded up to a power of two (at least ``minimum``, at most T)."""
    counts = loss_mask.sum(axis=1)
    k = min(pow2_at_least(int(counts.max(initial=0)), minimum), loss_mask.shape[1])
    out = np.zeros((loss_mask.shape[0], k), np.int32)
    for row, mask in enumerate(loss_mask):
        where = np.flatnonzero(mask)
        out[row, : len(where)] = where
    return out


def batch_sizes(batch: Batch) -> np.ndarray:
    """[T, K, patches, windows, frames, frame_len] of a batch (K: target slots per row; 0 where
    it has no vision input)."""
    x = batch.inputs
    t, k = x.input_ids.shape[1], batch.target_index.shape[1]
    if x.pixel_values is None:
        return np.array([t, k, 0, 0, 0, 0], np.int64)
    return np.array(
        [
            t,
            k,
            x.pixel_values.shape[1],
            x.window_index.shape[1],
            x.frame_index.shape[1],
            x.frame_index.shape[2],
        ],
        np.int64,
    )


def pad_batch(batch: Batch, sizes: np.ndarray, config: Qwen25VLConfig, pad_id: int = 0) -> Batch:
    """The batch padded to ``sizes`` (from batch_sizes; each >= the batch's own), e.g. so that
    every process of a multi-host run feeds arrays of the same global shape."""
    t, k, n, sw, sf, lf = (int(s) for s in sizes)
    x = batch.inputs
    b, t0 = x.input_ids.shape

    def grow(a: np.ndarray, shape: tuple[int, ...], fill) -> np.ndarray:
        out = np.full(shape, fill, a.dtype)
        out[tuple(slice(0, s) for s in a.shape)] = a
        return out

    inputs = ModelInputs(
        grow(x.input_ids, (b, t), pad_id),
        grow(x.attention_mask, (b, t), 0),
        grow(x.position_ids, (3, b, t), 0),
        grow(x.vision_token_index, (b, t), -1),
    )
    if n:
        v = config.vision
        w_len = v.window_merged**2 * v.merge_unit
        if x.pixel_values is None:
            pixels = np.zeros((b, 0, v.patch_dim), np.float32)
            rot = np.zeros((b, 0, 2), np.int32)
            win = np.zeros((b, 0, w_len), np.int32)
            frm = np.zeros((b, 0, 1), np.int32)
            n0 = 0
        else:
            pixels, rot, n0 = x.pixel_values, x.rot_pos, x.pixel_values.shape[1]
            # the padding sentinel is "one past the last patch": move it to the new end
            win = np.where(x.window_index >= n0, n, x.window_index)
            frm = np.where(x.frame_index >= n0, n, x.frame_index)
        inputs.pixel_values = grow(pixels, (b, n, v.patch_dim), 0)
        inputs.rot_pos = grow(rot, (b, n, 2), 0)
        inputs.window_index = grow(win.astype(np.int32), (b, sw, w_len), n)
        inputs.frame_index = grow(frm.astype(np.int32), (b, sf, lf), n)
    return dataclasses.replace(
        batch,
        inputs=inputs,
        loss_mask=grow(batch.loss_mask, (b, t), False),
        target_index=grow(batch.target_index, (b, k), 0),
    )

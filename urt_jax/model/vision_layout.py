"""Host-side (numpy) layout of the vision tower's attention, computed from the grids.

transformers permutes the patch sequence into window order, splits it by ``cu_seqlens`` and
un-permutes after the merger. Here the sequence stays in the processor's block-major order and
each attention segment is described by a row of patch indices instead: window layers attend
within ``window_index`` rows (at most (window/patch)^2 patches each, listed in transformers'
window order), full layers within ``frame_index`` rows (one row per frame). Attention then is a
gather into [segments, length], a dense masked attention, and a scatter back: fixed shapes for
jit, and O(N * window) work for the window layers instead of O(N^2).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from urt_jax.model.config import VisionConfig


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    rot_pos: np.ndarray  # [Np, 2] int32 (row, col) of each patch, block-major order
    window_index: np.ndarray  # [Sw, Lw] int32 patch indices; padding = Np (a zero row)
    frame_index: np.ndarray  # [Sf, Lf] int32 patch indices; padding = Np
    num_patches: int  # real patches (rows of pixel_values before padding)


def check_grids(grid_thw: np.ndarray, config: VisionConfig, what: str = "image_grid_thw") -> None:
    grid_thw = np.asarray(grid_thw)
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"{what}: expected shape [num, 3] (t, h, w), found {grid_thw.shape}")
    m = config.spatial_merge_size
    for i, (t, h, w) in enumerate(grid_thw.tolist()):
        if t < 1 or h < 1 or w < 1:
            raise ValueError(f"{what}[{i}] = {(t, h, w)}: every entry must be >= 1")
        if h % m or w % m:
            raise ValueError(
                f"{what}[{i}] = {(t, h, w)}: h and w must be divisible by spatial_merge_size {m}"
            )


def vision_layout(
    grid_thw: np.ndarray,
    config: VisionConfig,
    *,
    pad_patches_to: int | None = None,
    pad_windows_to: int | None = None,
    pad_frames_to: int | None = None,
    pad_frame_len_to: int | None = None,
) -> VisionLayout:
    """Attention segments and RoPE coordinates for the images/videos described by grid_thw."""
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    check_grids(grid_thw, config)
    m, ws, unit = config.spatial_merge_size, config.window_merged, config.merge_unit
    total = int(np.sum(np.prod(grid_thw, axis=1)))
    n_pad = total if pad_patches_to is None else int(pad_patches_to)
    if n_pad < total:
        raise ValueError(f"pad_patches_to={pad_patches_to} is smaller than the {total} patches")
    if n_pad % unit:
        raise ValueError(f"pad_patches_to={pad_patches_to} must be a multiple of {unit}")

    rot, windows, frames = [], [], []
    offset = 0
    for t, h, w in grid_thw.tolist():
        hh, ww = h // m, w // m
        # (row, col) of each patch in block-major order: blocks of m x m patches, row-major.
        rows = np.arange(h).reshape(hh, m, 1, 1).repeat(ww, 2).repeat(m, 3)
        cols = np.arange(w).reshape(1, 1, ww, m).repeat(hh, 0).repeat(m, 1)
        rc = np.stack([rows.transpose(0, 2, 1, 3).ravel(), cols.transpose(0, 2, 1, 3).ravel()], -1)
        rot.append(np.tile(rc, (t, 1)))
        units = np.arange(hh * ww).reshape(hh, ww)
        for f in range(t):
            base = offset + f * h * w
            frames.append(base + np.arange(h * w))
            for a in range(0, hh, ws):
                for c in range(0, ww, ws):
                    u = units[a : a + ws, c : c + ws].ravel()
                    windows.append((base + (u[:, None] * unit + np.arange(unit))).ravel())
        offset += t * h * w

    rot_pos = np.zeros((n_pad, 2), np.int32)
    if total:
        rot_pos[:total] = np.concatenate(rot)
    window_index = _pack(windows, n_pad, ws * ws * unit, pad_windows_to, "windows")
    frame_len = max((len(f) for f in frames), default=1)
    if pad_frame_len_to is not None:
        if pad_frame_len_to < frame_len:
            raise ValueError(f"pad_frame_len_to={pad_frame_len_to} < longest frame {frame_len}")
        frame_len = int(pad_frame_len_to)
    frame_index = _pack(frames, n_pad, frame_len, pad_frames_to, "frames")
    return VisionLayout(rot_pos, window_index, frame_index, total)


def _pack(
    segments: list[np.ndarray], pad_value: int, length: int, pad_rows_to: int | None, what: str
) -> np.ndarray:
    rows = len(segments) if pad_rows_to is None else int(pad_rows_to)
    if rows < len(segments):
        raise ValueError(f"pad_{what}_to={pad_rows_to} is smaller than the {len(segments)} {what}")
    out = np.full((max(rows, 1), length), pad_value, np.int32)
    for i, seg in enumerate(segments):
        out[i, : len(seg)] = seg
    return out


def merged_token_counts(grid_thw: np.ndarray, config: VisionConfig) -> np.ndarray:
    """Number of placeholder tokens (= merged vision features) per image or video."""
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    return np.prod(grid_thw, axis=1) // config.merge_unit

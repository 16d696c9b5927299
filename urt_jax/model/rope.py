"""Rotary embeddings: the 2D vision RoPE and the 3-axis M-RoPE of the text decoder.

Position ids are computed on the host (numpy) because they depend on the image and video grids;
the cos/sin tables are computed inside jitted code from those ids.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from urt_jax.model.config import Qwen25VLConfig

TEXT, IMAGE, VIDEO = 0, 1, 2


def inv_frequencies(theta: float, dim: int) -> np.ndarray:
    """1 / theta**(arange(0, dim, 2) / dim) in fp32, the same op order as transformers."""
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)


# ---------------------------------------------------------------------------------- text M-RoPE
def mrope_cos_sin(
    position_ids: jax.Array, config: Qwen25VLConfig, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim] from position ids [3, B, T].

    Frequency dims [0:s0) rotate with the temporal axis, [s0:s0+s1) with height, the rest with
    width. Computed in fp32, then cast to the activation dtype as transformers does.
    """
    t = config.text
    inv = jnp.asarray(inv_frequencies(t.rope_theta, t.head_dim))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv  # [3, B, T, hd/2]
    bounds = np.cumsum((0, *t.mrope_section))
    freqs = jnp.concatenate(
        [freqs[axis, ..., bounds[axis] : bounds[axis + 1]] for axis in range(3)], axis=-1
    )
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    # Computed once and kept: without the barrier XLA:CPU fuses cos/sin into every consumer,
    # recomputing them per head in every layer's forward and backward.
    return jax.lax.optimization_barrier((jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)))


def token_types(input_ids: np.ndarray, config: Qwen25VLConfig) -> np.ndarray:
    """0 text (including vision_start/end), 1 image pad, 2 video pad: HF's mm_token_type_ids."""
    types = np.zeros(input_ids.shape, np.int64)
    types[input_ids == config.image_token_id] = IMAGE
    types[input_ids == config.video_token_id] = VIDEO
    return types


def get_rope_index(
    input_ids: np.ndarray,
    config: Qwen25VLConfig,
    attention_mask: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE position ids [3, B, T] and rope deltas [B] (transformers 5.x semantics).

    Per row, pads (attention_mask 0) are removed; runs of equal token type are walked in order:
    a text run of n tokens takes positions cur..cur+n-1 on all three axes; an image or video run
    takes (cur + t*interval, cur + h, cur + w) over its merged grid, then cur += max(H, W).
    Pad positions are 0. The delta is max(position) + 1 - number of real tokens: decoding
    position = tokens so far + delta.
    """
    input_ids = np.asarray(input_ids)
    b, t_len = input_ids.shape
    mask = (
        np.ones_like(input_ids, dtype=bool)
        if attention_mask is None
        else np.asarray(attention_mask).astype(bool)
    )
    merge = config.vision.spatial_merge_size
    tps = config.vision.tokens_per_second
    types = token_types(input_ids, config)
    grids = {
        IMAGE: iter(np.asarray(image_grid_thw).tolist() if image_grid_thw is not None else []),
        VIDEO: iter(np.asarray(video_grid_thw).tolist() if video_grid_thw is not None else []),
    }
    # float32 like the torch tensors transformers multiplies, then truncated to int.
    seconds_per_grid = iter(
        np.asarray(second_per_grid_ts, np.float32) if second_per_grid_ts is not None else []
    )
    positions = np.zeros((3, b, t_len), np.int64)
    deltas = np.zeros((b,), np.int64)
    for row in range(b):
        row_types = types[row][mask[row]]
        pieces = []
        cur = 0
        for kind, group in itertools.groupby(row_types.tolist()):
            n = len(list(group))
            if kind == TEXT:
                pieces.append(np.broadcast_to(cur + np.arange(n), (3, n)))
                cur += n
                continue
            gt, gh, gw = next(grids[kind])
            hh, ww = gh // merge, gw // merge
            interval = (
                np.float32(1.0)
                if kind == IMAGE
                else np.float32(tps) * np.float32(next(seconds_per_grid, 1.0))
            )
            tpos = (np.arange(gt, dtype=np.float32) * interval).astype(np.int64)
            tt, yy, xx = np.meshgrid(tpos, np.arange(hh), np.arange(ww), indexing="ij")
            piece = np.stack([tt.ravel(), yy.ravel(), xx.ravel()]) + cur
            if piece.shape[1] != n:
                raise ValueError(
                    f"row {row}: a run of {n} placeholder tokens does not match the "
                    f"grid {(gt, gh, gw)} ({piece.shape[1]} tokens)"
                )
            pieces.append(piece)
            cur += max(hh, ww)
        pos = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        positions[:, row, mask[row]] = pos
        deltas[row] = (pos.max() + 1 - pos.shape[1]) if pos.size else 0
    return positions, deltas


# ---------------------------------------------------------------------------------- vision RoPE
def vision_cos_sin(rot_pos: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [N, head_dim] in fp32 from (row, col) patch coordinates [N, 2]."""
    inv = jnp.asarray(inv_frequencies(theta, head_dim // 2))  # head_dim/4 frequencies
    freqs = rot_pos.astype(jnp.float32)[..., None] * inv  # [N, 2, hd/4]
    freqs = freqs.reshape(freqs.shape[0], -1)  # (h freqs, w freqs)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)

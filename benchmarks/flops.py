"""Model FLOPs of Qwen2.5-VL training and inference steps: the useful work only (padding,
masked-out attention entries, rematerialisation and logits nobody reads are not counted).

With N_dec = matmul parameters of the decoder layers (q, k, v, o, gate, up, down), L layers,
model width d, sequence length T, vocabulary V:
    forward  = 2 * N_dec * tokens + 4 * L * T * d * tokens + 2 * d * V * predicted
    training = 3 * forward (backward = 2 x forward)
``predicted`` is the number of positions whose next-token distribution the loss needs (the
target tokens of SFT, the completion of GRPO, every position of a plain forward). Attention
counts QK^T and PV over all T keys (no causal halving, the PaLM convention). The embedding
lookup is not a matmul. The frozen vision tower counts its forward only (nothing is
differentiated through it): per patch 2 * (patch embedding + every block's qkv, proj and MLP)
matmul parameters, 4 * d_v * sum of S^2 per block over its attention segments (S: patches of a
window, or of a whole image in the full-attention blocks), and 2 * the merger's matmul
parameters per merged token.
"""

from __future__ import annotations

from collections.abc import Sequence

from urt_jax.model.config import Qwen25VLConfig, TextConfig, VisionConfig

FORMULA = (
    "training FLOPs = 3 x (2 N_dec tokens + 4 L T d tokens + 2 d V targets) "
    "+ frozen vision forward (2 N_vis per patch + 4 d_v sum(S^2) per block + merger); "
    "N_dec = decoder matmul parameters (q,k,v,o,gate,up,down), LM head only where a target "
    "is predicted, attention over all T keys (no causal halving), embedding lookup, padding "
    "and rematerialisation not counted"
)


def decoder_matmul_params(t: TextConfig) -> int:
    d, hd = t.hidden_size, t.head_dim
    attn = d * t.num_attention_heads * hd * 2 + d * t.num_key_value_heads * hd * 2
    return t.num_hidden_layers * (attn + 3 * d * t.intermediate_size)


def text_flops(t: TextConfig, seq_len: int, tokens: int, predicted: int, train: bool) -> float:
    """Decoder + LM head FLOPs over ``tokens`` real tokens in rows of ``seq_len`` positions."""
    fwd = (
        2.0 * decoder_matmul_params(t) * tokens
        + 4.0 * t.num_hidden_layers * seq_len * t.hidden_size * tokens
        + 2.0 * t.hidden_size * t.vocab_size * predicted
    )
    return 3.0 * fwd if train else fwd


def _segments(grid: Sequence[int], v: VisionConfig) -> tuple[list[int], list[int]]:
    """Patch counts of the attention windows and of the frames of one image/video grid."""
    t, h, w = (int(x) for x in grid)
    m, ws = v.spatial_merge_size, v.window_merged
    hh, ww = h // m, w // m
    windows = []
    for a in range(0, hh, ws):
        for c in range(0, ww, ws):
            windows.append(min(ws, hh - a) * min(ws, ww - c) * v.merge_unit)
    return windows * t, [h * w] * t


def vision_matmul_params(v: VisionConfig) -> dict[str, int]:
    d = v.hidden_size
    return {
        "patch_embed": v.patch_dim * d,
        "blocks": v.depth * (4 * d * d + 3 * d * v.intermediate_size),
        "merger": (d * v.merge_unit) ** 2 + d * v.merge_unit * v.out_hidden_size,
    }


def vision_forward_flops(v: VisionConfig, grids: Sequence[Sequence[int]]) -> float:
    p = vision_matmul_params(v)
    full = set(v.fullatt_block_indexes)
    total = 0.0
    for grid in grids:
        windows, frames = _segments(grid, v)
        n = sum(frames)
        total += 2.0 * n * (p["patch_embed"] + p["blocks"])
        for b in range(v.depth):
            segs = frames if b in full else windows
            total += 4.0 * v.hidden_size * sum(s * s for s in segs)
        total += 2.0 * (n // v.merge_unit) * p["merger"]
    return total


def step_flops(
    config: Qwen25VLConfig,
    seq_len: int,
    tokens: int,
    predicted: int,
    grids: Sequence[Sequence[int]],
    train: bool,
) -> float:
    """Model FLOPs of one step: ``tokens`` real tokens in rows of ``seq_len`` positions,
    ``predicted`` positions through the LM head, the images ``grids`` (all rows together)."""
    return text_flops(config.text, seq_len, tokens, predicted, train) + vision_forward_flops(
        config.vision, grids
    )

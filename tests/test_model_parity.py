"""fp32 and bf16 logits of the Flax model against transformers' eager PyTorch Qwen2.5-VL."""

import numpy as np
import pytest
import torch

import urt_jax
from tests import hf_reference as ref
from urt_jax.model.rope import get_rope_index
from urt_jax.model.vision_layout import vision_layout

FP32_TOL = 1e-4
# bf16 has an 8-bit mantissa: one ulp of a logit in [1, 2) is 2**-7 = 7.8e-3. Measured here: max
# |diff| 7.8e-3 (one ulp: the two implementations round some intermediate differently), mean
# 7.9e-4, logits std 0.17. Allowed: two ulps at max, and a mean ten times smaller.
BF16_MAX_TOL = 2 * 2**-7
BF16_MEAN_TOL = 2e-3


@pytest.fixture(scope="session")
def untied(tmp_path_factory):
    """GQA (4 query heads, 2 kv heads), untied embeddings, randomised norms and biases."""
    # qk_gain sharpens attention: with near-uniform attention a swapped M-RoPE axis moves the
    # logits by only ~2e-4; at gain 4 by ~4e-3, far outside the 1e-4 tolerance.
    hf = ref.make_model(ref.tiny_config(tie_word_embeddings=False), seed=0, qk_gain=4.0)
    return ref.save_and_load_ours(hf, tmp_path_factory.mktemp("untied"))


@pytest.fixture(scope="session")
def tied(tmp_path_factory):
    hf = ref.make_model(
        ref.tiny_config(tie_word_embeddings=True, num_key_value_heads=1), seed=1, qk_gain=4.0
    )
    return ref.save_and_load_ours(hf, tmp_path_factory.mktemp("tied"))


def _ours(model, batch):
    keys = ("input_ids", "attention_mask", *ref.MEDIA_KEYS)
    return np.asarray(model(**{k: batch[k] for k in keys if k in batch}), np.float32)


def _compare(pair, batch, tol=FP32_TOL):
    hf, ours = pair
    expected = ref.hf_logits(hf, batch)
    got = _ours(ours, batch)
    assert got.shape == expected.shape
    real = batch["attention_mask"].astype(bool)  # logits at pad positions are meaningless
    diff = np.abs(got[real] - expected[real]).max()
    print(f"fp32 max |logits diff| {diff:.3g} (logit std {expected[real].std():.3g})")
    assert diff <= tol, f"max |logits diff| {diff:.3g} > {tol}"
    assert expected[real].std() > 1e-2  # the comparison is not between near-zero tensors
    return diff


CASES = {
    "text_only_right_padded": ([[("text", 17)], [("text", 9)]], "right"),
    "text_only_left_padded": ([[("text", 17)], [("text", 9)]], "left"),
    "one_image": ([[("text", 4), ("image", (8, 12)), ("text", 6)]], "right"),
    "two_images_different_sizes": (
        [[("text", 3), ("image", (8, 12)), ("text", 2), ("image", (4, 6)), ("text", 5)]],
        "right",
    ),
    "video_fractional_seconds": ([[("text", 3), ("video", (3, 4, 6, 0.75)), ("text", 4)]], "right"),
    "left_padded_image_and_video": (
        [
            [("text", 3), ("image", (8, 12)), ("text", 2), ("video", (3, 4, 4, 0.5)), ("text", 3)],
            [("text", 6), ("image", (4, 6)), ("text", 2)],
        ],
        "left",
    ),
    "right_padded_image_and_video": (
        [
            [("text", 5), ("image", (4, 4)), ("text", 1)],
            [("text", 2), ("video", (2, 8, 12, 1.0)), ("text", 4), ("image", (6, 4)), ("text", 2)],
        ],
        "right",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_logits_match_transformers(untied, case):
    rows, side = CASES[case]
    _compare(untied, ref.build_batch(rows, padding_side=side, seed=3))


def test_fp32_tied_embeddings_match(tied):
    rows, side = CASES["left_padded_image_and_video"]
    assert tied[1].lm_head is None
    _compare(tied, ref.build_batch(rows, padding_side=side, seed=4))


def test_vision_tower_alone_matches(untied):
    hf, ours = untied
    grid = np.array([[1, 8, 12], [1, 4, 6], [3, 4, 4], [1, 10, 2]])
    pixels = (
        np.random.default_rng(0)
        .standard_normal((int(grid.prod(1).sum()), ours.config.vision.patch_dim))
        .astype(np.float32)
    )
    expected = ref.hf_vision_features(hf, pixels, grid)
    layout = vision_layout(grid, ours.config.vision)
    got = np.asarray(ours.visual(pixels, layout.rot_pos, layout.window_index, layout.frame_index))
    assert got.shape == expected.shape
    diff = np.abs(got - expected).max()
    print(f"vision tower max |diff| {diff:.3g}")
    assert diff <= FP32_TOL


def test_rope_index_matches_transformers(untied):
    hf, ours = untied
    rows, _ = CASES["left_padded_image_and_video"]
    for side in ("left", "right"):
        batch = ref.build_batch(rows, padding_side=side, seed=5)
        expected_pos, expected_delta = ref.hf_rope_index(hf, batch)
        pos, delta = get_rope_index(
            batch["input_ids"],
            ours.config,
            batch["attention_mask"],
            batch.get("image_grid_thw"),
            batch.get("video_grid_thw"),
            batch.get("second_per_grid_ts"),
        )
        np.testing.assert_array_equal(pos, expected_pos)
        np.testing.assert_array_equal(delta, np.asarray(expected_delta).reshape(-1))


def test_bf16_logits_close_to_transformers_bf16(tmp_path):
    hf16 = ref.make_model(ref.tiny_config(), seed=7, dtype=torch.bfloat16)
    ref.save_model(hf16, tmp_path)
    ours = urt_jax.from_pretrained(tmp_path)  # dtype kept from the checkpoint: bf16
    assert ours.language_model.layers.mlp.up_proj.kernel[...].dtype == np.dtype("bfloat16")
    rows, side = CASES["left_padded_image_and_video"]
    batch = ref.build_batch(rows, padding_side=side, seed=6)
    expected = ref.hf_logits(hf16, batch)
    got = _ours(ours, batch)
    real = batch["attention_mask"].astype(bool)
    diff = np.abs(got[real] - expected[real])
    print(
        f"bf16 max |diff| {diff.max():.4g}, mean {diff.mean():.4g}, "
        f"logit std {expected[real].std():.3g}"
    )
    assert diff.max() <= BF16_MAX_TOL
    assert diff.mean() <= BF16_MEAN_TOL

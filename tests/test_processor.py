"""Image processing equals transformers' Qwen2VLImageProcessorPil exactly; video layout checks."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from urt_jax.data.processor import (
    ImageError,
    ProcessorConfig,
    process_image,
    process_video,
    sample_frame_indices,
    smart_resize,
)

SIZES = [  # (width, height, mode)
    (224, 224, "RGB"),
    (37, 50, "RGB"),  # below min_pixels: scaled up
    (13, 13, "L"),  # tiny, grayscale
    (1000, 300, "RGBA"),  # transparency composited onto white
    (640, 480, "P"),  # palette
    (3, 500, "RGB"),  # extreme aspect ratio
    (1920, 1080, "RGB"),  # above max_pixels of the GRPO setting: scaled down
    (385, 383, "RGB"),  # just above 384x384
    (57, 29, "CMYK"),
]


@pytest.mark.parametrize("max_pixels", [147456, 12845056])
@pytest.mark.parametrize("width,height,mode", SIZES)
def test_image_equals_transformers_pil_processor(width, height, mode, max_pixels):
    rng = np.random.default_rng(width * 7 + height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    else:
        image = image.convert(mode)
    cfg = ProcessorConfig(min_pixels=3136, max_pixels=max_pixels)
    hf = Qwen2VLImageProcessorPil(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    want = hf(images=[image], return_tensors="np")
    pixels, grid = process_image(image, cfg)
    np.testing.assert_array_equal(grid, want["image_grid_thw"][0])
    assert pixels.dtype == want["pixel_values"].dtype
    np.testing.assert_array_equal(pixels, want["pixel_values"])


def test_min_and_max_pixels_are_hit():
    cfg = ProcessorConfig(min_pixels=3136, max_pixels=147456)
    assert smart_resize(10, 10, 28, cfg.min_pixels, cfg.max_pixels) == (56, 56)
    h, w = smart_resize(1080, 1920, 28, cfg.min_pixels, cfg.max_pixels)
    assert h * w <= cfg.max_pixels and h % 28 == 0 and w % 28 == 0
    with pytest.raises(ImageError, match="aspect ratio"):
        smart_resize(1, 300, 28)


def test_several_images_concatenate():
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((60, 90), (120, 40))
    ]
    hf = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=147456)
    want = hf(images=images, return_tensors="np")
    cfg = ProcessorConfig(max_pixels=147456)
    out = [process_image(im, cfg) for im in images]
    pixels, grids = np.concatenate([o[0] for o in out]), np.stack([o[1] for o in out])
    np.testing.assert_array_equal(grids, want["image_grid_thw"])
    np.testing.assert_array_equal(pixels, want["pixel_values"])


def test_video_layout():
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)) for _ in range(5)]
    cfg = ProcessorConfig()
    pixels, grid, spg = process_video(frames, fps=2.0, cfg=cfg)
    # 5 frames padded to 6 by repeating the last one: 3 temporal patches of 4x6 patches
    np.testing.assert_array_equal(grid, [3, 4, 6])
    assert pixels.shape == (3 * 4 * 6, 1176) and spg == 1.0
    # a video of two identical frames is the image itself (the processor repeats an image in time)
    still, _ = process_image(frames[0], cfg)
    twice, grid2, _ = process_video([frames[0], frames[0]], fps=1.0, cfg=cfg)
    np.testing.assert_array_equal(twice, still)
    # within a row, values run (C, T, ph, pw): the T halves of each channel come from frames 0, 1
    two, _, _ = process_video(frames[:2], fps=1.0, cfg=cfg)
    rows = two.reshape(-1, 3, 2, 14, 14)
    first, _ = process_image(frames[0], cfg)
    second, _ = process_image(frames[1], cfg)
    np.testing.assert_array_equal(rows[:, :, 0], first.reshape(-1, 3, 2, 14, 14)[:, :, 0])
    np.testing.assert_array_equal(rows[:, :, 1], second.reshape(-1, 3, 2, 14, 14)[:, :, 0])
    # the last temporal patch of the padded video holds frame 4 twice
    last = pixels.reshape(3, 24, 3, 2, 14, 14)[2]
    np.testing.assert_array_equal(last[:, :, 0], last[:, :, 1])


def test_frame_sampling():
    np.testing.assert_array_equal(sample_frame_indices(5, 8), np.arange(5))
    idx = sample_frame_indices(100, 8)
    assert len(idx) == 8 and idx[0] == 0 and idx[-1] < 100
    assert set(np.diff(idx)) <= {12, 13}  # evenly spaced: 100 / 8 = 12.5

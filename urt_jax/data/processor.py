"""Qwen2.5-VL image and video preprocessing in numpy + PIL, equal to transformers'
``Qwen2VLImageProcessorPil`` (and to its video processor's patch layout).

An image is converted to RGB (transparency composited onto white), resized with PIL bicubic on
uint8 to ``smart_resize`` dimensions (multiples of patch*merge, pixel count within
[min_pixels, max_pixels]), rescaled by 1/255 (in float64, then float32, as transformers does),
normalised with the CLIP mean/std, and cut into patches in block-major order: one row of
C*T*p*p values per 14x14 patch, a still image repeated T=2 times along time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ProcessorConfig:
    """Values of a Qwen2.5-VL ``preprocessor_config.json`` (Hub defaults)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    video_min_pixels: int = 3136
    video_max_pixels: int = 12845056
    max_frames: int = 8
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def to_hf_dict(self) -> dict:
        """preprocessor_config.json as transformers writes it for Qwen2.5-VL."""
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "merge_size": self.merge_size,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        }

    def video_hf_dict(self) -> dict:
        d = self.to_hf_dict()
        d.pop("image_processor_type")
        d.update(
            video_processor_type="Qwen2VLVideoProcessor",
            min_pixels=self.video_min_pixels,
            max_pixels=self.video_max_pixels,
            size={"shortest_edge": self.video_min_pixels, "longest_edge": self.video_max_pixels},
        )
        return d


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 12845056
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, pixel count in [min, max], aspect kept."""
    if min(height, width) <= 0:
        raise ImageError(f"image size {width}x{height} is empty")
    if max(height, width) / min(height, width) > 200:
        raise ImageError(f"aspect ratio of {width}x{height} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto a white background."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _normalised(image: Image.Image, size: tuple[int, int], cfg: ProcessorConfig) -> np.ndarray:
    """Resized, rescaled, normalised [C, H, W] float32."""
    height, width = size
    resized = np.asarray(to_rgb(image).resize((width, height), resample=Image.BICUBIC))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _patchify(frames: np.ndarray, cfg: ProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[F, C, H, W] (F a multiple of T) -> rows [t*gh*gw, C*T*p*p] in block-major order."""
    f, c, h, w = frames.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gt, gh, gw = f // tp, h // p, w // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, bh, bw, mh, mw, C, T, ph, pw)
    return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def process_image(
    image: Image.Image, cfg: ProcessorConfig = ProcessorConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """pixel_values [gh*gw, C*T*p*p] float32 and grid_thw [3] = (1, gh, gw)."""
    size = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    x = _normalised(image, size, cfg)
    frames = np.broadcast_to(x[None], (cfg.temporal_patch_size, *x.shape))
    pixels, grid = _patchify(frames, cfg)
    return pixels, np.asarray(grid, np.int64)


def process_video(
    frames: Sequence[Image.Image], fps: float, cfg: ProcessorConfig = ProcessorConfig()
) -> tuple[np.ndarray, np.ndarray, float]:
    """Already-sampled frames -> (pixel_values, grid_thw (t, gh, gw), second_per_grid_t).

    All frames are resized to the first frame's smart_resize size; a frame count that is not a
    multiple of temporal_patch_size is padded by repeating the last frame. ``fps`` is the rate of
    the sampled frames, so one temporal patch spans temporal_patch_size / fps seconds.
    """
    if not frames:
        raise ImageError("a video needs at least one frame")
    size = smart_resize(
        frames[0].height, frames[0].width, cfg.factor, cfg.video_min_pixels, cfg.video_max_pixels
    )
    x = np.stack([_normalised(f, size, cfg) for f in frames])
    if pad := -len(frames) % cfg.temporal_patch_size:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    pixels, grid = _patchify(x, cfg)
    return pixels, np.asarray(grid, np.int64), cfg.temporal_patch_size / float(fps)


def sample_frame_indices(total: int, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` evenly spaced frame indices out of ``total``."""
    if total <= 0:
        raise ImageError("a video needs at least one frame")
    if total <= max_frames:
        return np.arange(total)
    return np.floor(np.arange(max_frames) * (total / max_frames)).astype(np.int64)

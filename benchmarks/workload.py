"""What every side of the benchmark runs on: the model shape, the shared checkpoint (a random
transformers Qwen2.5-VL saved once, loaded by both sides) and the batches.

Images are drawn by the synthetic task and go through the project's image processor (equal to
transformers' Qwen2VLImageProcessor); text tokens are random ids; special token ids sit at the end
of the vocabulary in Qwen's order. Every batch is a pure function of the shape and a seed, so
separate worker processes build identical batches.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from urt_jax.data.processor import process_image  # noqa: E402
from urt_jax.data.synthetic import COLORS, SHAPES, Scene, draw_image  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    vision_fullatt: tuple[int, ...]
    batch: int  # rows of the SFT / forward batch
    seq: int  # tokens per row (no padding)
    image: int  # side of the square image of every row, pixels
    reply: int  # target tokens per row (the end of the row)
    samples: int  # G of group sampling
    new_tokens: int
    prompt: int  # tokens of the sampling prompt (image included)
    mixed_rows: int  # rows of the recompilation test's batches
    mixed_lengths: tuple[int, ...]  # its length buckets
    mixed_images: tuple[tuple[int, int], ...]  # (height, width) choices
    mixed_max_reply: int  # replies of 1..this many target tokens


DEFAULT = Shape(
    "60M", 32000, 512, 8, 8, 2, 1376, 4, 256, 4, 640, (1, 3),
    batch=4, seq=512, image=224, reply=256, samples=8, new_tokens=128, prompt=128,
    mixed_rows=2, mixed_lengths=(256, 512), mixed_max_reply=256,
    mixed_images=((224, 224), (168, 224), (112, 112)),
)  # fmt: skip
QUICK = Shape(
    "quick", 4096, 128, 2, 4, 2, 352, 2, 64, 2, 160, (1,),
    batch=2, seq=128, image=112, reply=64, samples=8, new_tokens=16, prompt=64,
    mixed_rows=2, mixed_lengths=(64, 128), mixed_max_reply=64,
    mixed_images=((112, 112), (56, 112)),
)  # fmt: skip
SHAPES_BY_NAME = {"default": DEFAULT, "quick": QUICK}


@dataclasses.dataclass(frozen=True)
class Ids:
    bos: int
    eos: int
    start: int
    end: int
    image: int
    video: int

    @classmethod
    def of(cls, shape: Shape) -> Ids:
        base = shape.vocab - 96  # the order of Qwen's specials (see configs/model/tiny.yaml)
        return cls(base, base + 2, base + 9, base + 10, base + 12, base + 13)


def _mrope(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def hf_config(shape: Shape):
    from transformers import Qwen2_5_VLConfig

    ids = Ids.of(shape)
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=shape.vocab,
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            hidden_act="silu",
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            bos_token_id=ids.bos,
            eos_token_id=ids.eos,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": _mrope(shape.hidden // shape.heads),
            },
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=shape.vision_depth,
            hidden_size=shape.vision_hidden,
            intermediate_size=shape.vision_intermediate,
            num_heads=shape.vision_heads,
            hidden_act="silu",
            in_channels=3,
            out_hidden_size=shape.hidden,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=list(shape.vision_fullatt),
            tokens_per_second=2,
        ),
        image_token_id=ids.image,
        video_token_id=ids.video,
        vision_start_token_id=ids.start,
        vision_end_token_id=ids.end,
        tie_word_embeddings=False,
    )


def save_checkpoint(shape: Shape, out_dir: str, seed: int = 0) -> dict:
    """A random transformers model of ``shape`` (tests/hf_reference.make_model's init) saved in
    the Hub layout; returns parameter counts."""
    import torch

    from tests import hf_reference as ref

    torch.manual_seed(seed)
    model = ref.make_model(hf_config(shape), seed=seed)
    ref.save_model(model, out_dir)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return {"total": total, "vision": vision, "text": total - vision}


def image_pixels(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic scene through the image processor: (pixel_values, grid_thw [3])."""
    rng = random.Random(seed)
    scene = Scene(rng.choice(SHAPES), rng.choice(sorted(COLORS)), rng.choice((1, 2)), "white")
    image = draw_image(scene, max(height, width), seed)
    if height != width:
        image = image.resize((width, height))
    return process_image(image)


def example(shape: Shape, length: int, reply: int, image: tuple[int, int], seed: int) -> dict:
    """One row: 16 text tokens, the image's placeholders, text up to ``length``; the last
    ``reply`` tokens are targets."""
    ids = Ids.of(shape)
    pixels, grid = image_pixels(*image, seed=seed)
    n_img = int(np.prod(grid)) // 4
    rng = np.random.default_rng(seed)
    head = rng.integers(10, ids.bos, 16).tolist()
    body = [ids.start] + [ids.image] * n_img + [ids.end]
    tail = rng.integers(10, ids.bos, length - len(head) - len(body)).tolist()
    row = np.asarray(head + body + tail, np.int32)
    mask = np.zeros(length, bool)
    mask[length - reply :] = True
    return {
        "input_ids": row,
        "loss_mask": mask,
        "pixel_values": pixels,
        "image_grid_thw": grid[None],
    }


def sft_examples(shape: Shape, seed: int = 0) -> list[dict]:
    return [
        example(shape, shape.seq, shape.reply, (shape.image, shape.image), seed + i)
        for i in range(shape.batch)
    ]


def hf_batch(shape: Shape, examples: list[dict], labels: bool) -> dict[str, np.ndarray]:
    """The transformers processor's format for equal-length rows (+ labels: -100 off target)."""
    ids = np.stack([e["input_ids"] for e in examples]).astype(np.int64)
    out = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "mm_token_type_ids": (ids == Ids.of(shape).image).astype(np.int64),
        "pixel_values": np.concatenate([e["pixel_values"] for e in examples]),
        "image_grid_thw": np.concatenate([e["image_grid_thw"] for e in examples]),
    }
    if labels:
        mask = np.stack([e["loss_mask"] for e in examples])
        out["labels"] = np.where(mask, ids, -100)
    return out


def sampling_prompt(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """One prompt of ``shape.prompt`` tokens with one image, in the processor's format."""
    e = example(shape, shape.prompt, 0, (shape.image, shape.image), seed)
    return hf_batch(shape, [e], labels=False)


def _need(image: tuple[int, int]) -> int:
    """Tokens of a row before its reply: 16 text, the image's placeholders and markers, 8."""
    return 16 + image[0] * image[1] // 784 + 2 + 8


def mixed_examples(shape: Shape, count: int, seed: int) -> list[list[dict]]:
    """``count`` batches of ``shape.mixed_rows`` rows of random length, reply length and image
    size (one size per batch)."""
    rng = random.Random(seed)
    batches = []
    for b in range(count):
        image = rng.choice(shape.mixed_images)
        rows = []
        for r in range(shape.mixed_rows):
            length = rng.randint(_need(image) + 1, max(shape.mixed_lengths))
            reply = rng.randint(1, min(shape.mixed_max_reply, length - _need(image)))
            rows.append(example(shape, length, reply, image, seed * 100003 + b * 101 + r))
        batches.append(rows)
    return batches


def warmup_examples(shape: Shape, seed: int, min_targets: int) -> list[list[dict]]:
    """One batch per (length bucket, target bucket, image size) that the mixed batches can
    produce, so that every bucketed shape is compiled before counting (callers drop batches
    whose bucketed shapes repeat)."""
    batches = []
    for bucket in sorted(shape.mixed_lengths):
        for j, image in enumerate(shape.mixed_images):
            most = min(shape.mixed_max_reply, bucket - _need(image))
            if most < 1:
                continue
            k = min_targets
            while True:
                rows = [example(shape, bucket, min(k, most), image, seed + j)]
                rows += [example(shape, _need(image) + 1, 1, image, seed + j + 1)]
                batches.append((rows * shape.mixed_rows)[: shape.mixed_rows])
                if k >= most:
                    break
                k *= 2
    return batches

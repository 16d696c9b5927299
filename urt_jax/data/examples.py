"""Record -> model-ready example (numpy): media loaded and processed, chat tokenised with the
target mask, optional candidate swapping against position bias."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from urt_jax.data.chat import build_messages, encode_chat
from urt_jax.data.media import DEFAULT_MAX_IMAGE_PIXELS, load_video, open_image
from urt_jax.data.processor import ProcessorConfig, process_image, process_video
from urt_jax.data.records import PreferenceRecord, RecordError
from urt_jax.data.templates import Templates
from urt_jax.model.config import Qwen25VLConfig


class ExampleTooLong(RecordError):
    pass


@dataclasses.dataclass
class ExampleBuilder:
    """Turns records into examples; holds everything the conversion needs.

    ``swap_probability``: chance of exchanging the two candidates of a pairwise item (the verdict
    flips with it); decided per record from ``seed`` and the record id, so it is reproducible.
    """

    tokenizer: object
    templates: Templates
    model_config: Qwen25VLConfig
    processor: ProcessorConfig = dataclasses.field(default_factory=ProcessorConfig)
    max_length: int | None = None
    include_reply: bool = True
    swap_probability: float = 0.0
    seed: int = 0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self):
        tok = self.tokenizer.convert_tokens_to_ids
        c = self.model_config
        for name, token, want in (
            ("image_token_id", "<|image_pad|>", c.image_token_id),
            ("video_token_id", "<|video_pad|>", c.video_token_id),
            ("vision_start_token_id", "<|vision_start|>", c.vision_start_token_id),
        ):
            if tok(token) != want:
                raise ValueError(
                    f"tokenizer maps {token} to {tok(token)} but the model config's "
                    f"{name} is {want}: they must come from the same model"
                )
        m = self.model_config.vision
        if (m.patch_size, m.temporal_patch_size, m.spatial_merge_size) != (
            self.processor.patch_size,
            self.processor.temporal_patch_size,
            self.processor.merge_size,
        ):
            raise ValueError("processor patch/temporal/merge sizes differ from the vision config")

    def maybe_swap(self, record: PreferenceRecord) -> PreferenceRecord:
        if self.swap_probability <= 0 or record.mode != "pairwise" or record.user_text is not None:
            return record
        if record.reply is not None and self.include_reply:
            return record  # a fixed reasoning text names the candidates by position
        if random.Random(f"{self.seed}:{record.id}").random() < self.swap_probability:
            return record.swapped()
        return record

    def __call__(self, record: PreferenceRecord) -> dict[str, np.ndarray]:
        record = self.maybe_swap(record)
        unit = self.processor.merge_size**2
        images, grids, videos, vgrids, spgs = [], [], [], [], []
        for m in record.media:
            if m.kind == "image":
                src = m.path if m.path is not None else m.data
                pixels, grid = process_image(open_image(src, self.max_image_pixels), self.processor)
                images.append(pixels)
                grids.append(grid)
            else:
                frames, fps = load_video(m, self.processor.max_frames, self.max_image_pixels)
                pixels, grid, spg = process_video(frames, fps, self.processor)
                videos.append(pixels)
                vgrids.append(grid)
                spgs.append(spg)
        messages = build_messages(record, self.templates, include_reply=self.include_reply)
        enc = encode_chat(
            self.tokenizer,
            messages,
            [int(np.prod(g)) // unit for g in grids],
            [int(np.prod(g)) // unit for g in vgrids],
        )
        if self.max_length is not None and len(enc.input_ids) > self.max_length:
            raise ExampleTooLong(
                f"{record.source or record.id}: {len(enc.input_ids)} tokens after "
                f"tokenisation exceeds max_length {self.max_length}"
            )
        out = {
            "input_ids": enc.input_ids,
            "loss_mask": enc.loss_mask,
            "prompt_length": np.int32(enc.prompt_length),
        }
        if images:
            out["pixel_values"] = np.concatenate(images)
            out["image_grid_thw"] = np.stack(grids)
        if videos:
            out["pixel_values_videos"] = np.concatenate(videos)
            out["video_grid_thw"] = np.stack(vgrids)
            out["second_per_grid_ts"] = np.asarray(spgs, np.float32)
        out["verdict"] = np.asarray(record.verdict)
        out["record_id"] = np.asarray(record.id)
        return out


def builder_from_config(
    data, model_config: Qwen25VLConfig, seed: int = 0, include_reply: bool = True
) -> ExampleBuilder:
    """The ExampleBuilder a run config's data section describes."""
    from urt_jax.data.tokenizer import ASSET_DIR, load_tokenizer

    return ExampleBuilder(
        load_tokenizer(data.tokenizer or ASSET_DIR),
        Templates.load(data.templates),
        model_config,
        ProcessorConfig.with_limits(data.min_pixels, data.max_pixels, data.max_frames),
        max_length=data.max_length,
        include_reply=include_reply,
        swap_probability=data.swap_probability,
        seed=seed,
    )

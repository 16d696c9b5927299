"""The model's processor: chat messages with images and videos -> the model's inputs, no torch.

``Processor.from_pretrained(model_dir)`` takes everything from the checkpoint directory, as
transformers' ``Qwen2_5_VLProcessor`` does: the tokenizer, the chat template
(``chat_template.jinja``, ``chat_template.json`` or the tokenizer's own), the pixel settings of
``preprocessor_config.json`` (min/max pixels, patch, temporal patch and merge sizes, mean/std; a
``video_preprocessor_config.json`` for video frames when present) and the end-of-turn ids of
``generation_config.json``. Arguments override single settings. Images are processed exactly as
transformers' ``Qwen2VLImageProcessorPil``; placeholders are expanded and only the last assistant
turn is a training target (the loss mask), as the data pipeline uses it.

Messages use transformers' chat format; a content item is ``{"type": "text", "text": ...}``,
``{"type": "image", "image": PIL image | path | bytes}`` or ``{"type": "video", "video": path |
[frames], "fps": rate of the frames given}`` (at most ``max_frames`` evenly spaced frames are kept).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from urt_jax.data.chat import encode_chat
from urt_jax.data.media import (
    DEFAULT_FRAMES_FPS,
    DEFAULT_MAX_IMAGE_PIXELS,
    MediaError,
    load_video,
    open_image,
)
from urt_jax.data.processor import (
    ProcessorConfig,
    process_image,
    process_video,
    sample_frame_indices,
)
from urt_jax.data.records import Media

IMAGE_PAD, VIDEO_PAD, VISION_START, IM_END = (
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|im_end|>",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
VISION_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)


def pad_rows(
    rows: Sequence[Mapping[str, np.ndarray]], pad_id: int, padding_side: str = "left"
) -> dict[str, np.ndarray]:
    """Encoded rows (``input_ids`` and vision inputs each) as one batch in the HF processor's
    names: ``input_ids``/``attention_mask`` [B, T] padded on ``padding_side``, the vision inputs
    concatenated in row order."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', found {padding_side!r}")
    length = max(len(r["input_ids"]) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[i, cols] = r["input_ids"]
        mask[i, cols] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    for key in VISION_KEYS:
        parts = [r[key] for r in rows if key in r]
        if parts:
            batch[key] = np.concatenate(parts)
    return batch


class ProcessorError(ValueError):
    """A checkpoint directory whose processor files are missing, unreadable or inconsistent."""


def has_tokenizer(path: str | None) -> bool:
    return bool(path) and any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ProcessorError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise ProcessorError(f"{path}: expected a JSON object")
    return data


def _pixel_limits(d: Mapping[str, Any]) -> dict[str, int]:
    """min/max pixels of a preprocessor config: the explicit keys, else size's edges."""
    size = d.get("size") if isinstance(d.get("size"), Mapping) else {}
    out = {}
    for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        value = d.get(key, size.get(edge))
        if value is not None:
            out[key] = int(value)
    return out


def pixel_config_from_dir(
    model_dir: str | None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_frames: int | None = None,
) -> ProcessorConfig:
    """The pixel settings of a checkpoint directory's preprocessor files (Hub defaults where it
    has none), with the given limits taking precedence for images and video frames alike."""
    base = ProcessorConfig()
    fields: dict[str, Any] = {}
    image = _read_json(os.path.join(model_dir, "preprocessor_config.json")) if model_dir else None
    video = (
        _read_json(os.path.join(model_dir, "video_preprocessor_config.json")) if model_dir else None
    )
    if image:
        for key in ("patch_size", "temporal_patch_size", "merge_size"):
            if key in image:
                fields[key] = int(image[key])
        for key in ("image_mean", "image_std"):
            if key in image:
                fields[key] = tuple(float(x) for x in image[key])
        fields.update(_pixel_limits(image))
    limits = _pixel_limits(video) if video else {}
    fields["video_min_pixels"] = limits.get("min_pixels", fields.get("min_pixels", base.min_pixels))
    fields["video_max_pixels"] = limits.get("max_pixels", fields.get("max_pixels", base.max_pixels))
    if min_pixels is not None:
        fields["min_pixels"] = fields["video_min_pixels"] = int(min_pixels)
    if max_pixels is not None:
        fields["max_pixels"] = fields["video_max_pixels"] = int(max_pixels)
    if max_frames is not None:
        fields["max_frames"] = int(max_frames)
    return dataclasses.replace(base, **fields)


def _chat_template(model_dir: str, tokenizer) -> str | None:
    """The processor's chat template (chat_template.jinja, chat_template.json), else the
    tokenizer's."""
    jinja = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    data = _read_json(os.path.join(model_dir, "chat_template.json"))
    if data and isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    return getattr(tokenizer, "chat_template", None) or None


def _eos_ids(model_dir: str | None, tokenizer) -> tuple[int, ...]:
    """generation_config.json's eos_token_id(s), always with <|im_end|> (the end of a turn)."""
    ids: list[int] = []
    gen = _read_json(os.path.join(model_dir, "generation_config.json")) if model_dir else None
    if gen and gen.get("eos_token_id") is not None:
        value = gen["eos_token_id"]
        ids += [int(v) for v in (value if isinstance(value, list) else [value])]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in ids:
        ids.insert(0, im_end)
    if not ids:
        raise ProcessorError(
            f"{model_dir or 'tokenizer'}: no end-of-turn token: the tokenizer has no {IM_END} "
            "and there is no generation_config.json with eos_token_id"
        )
    return tuple(ids)


def load_tokenizer_dir(path: str):
    """An HF fast tokenizer from local files only, with a clear error where there is none."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise ProcessorError(f"{path}: tokenizer directory not found")
    if not has_tokenizer(path):
        raise ProcessorError(
            f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json or vocab.json)"
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@dataclasses.dataclass
class Processor:
    """Tokenizer + chat template + pixel settings + end-of-turn ids of one model."""

    tokenizer: Any
    pixels: ProcessorConfig = dataclasses.field(default_factory=ProcessorConfig)
    eos_token_ids: tuple[int, ...] = ()
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # refuse larger files (decompression bombs)
    source: str | None = None  # the directory it was read from

    def __post_init__(self):
        if not self.eos_token_ids:
            self.eos_token_ids = _eos_ids(None, self.tokenizer)
        for token in (IMAGE_PAD, VIDEO_PAD, VISION_START):
            if self.tokenizer.convert_tokens_to_ids(token) in (None, self.tokenizer.unk_token_id):
                raise ProcessorError(
                    f"{self.source or 'tokenizer'}: the tokenizer has no {token} token; "
                    "it is not a Qwen2.5-VL tokenizer"
                )

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        *,
        tokenizer: str | os.PathLike | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_frames: int | None = None,
        chat_template: str | None = None,
    ) -> Processor:
        """The processor of a checkpoint directory. ``tokenizer`` (a directory) replaces the
        checkpoint's tokenizer; ``min_pixels``/``max_pixels`` (images and video frames alike) and
        ``max_frames`` replace its pixel settings; ``chat_template`` its template."""
        model_dir = os.fspath(model_dir)
        tok_dir = os.fspath(tokenizer) if tokenizer is not None else model_dir
        tok = load_tokenizer_dir(tok_dir)
        template = chat_template or _chat_template(tok_dir, tok)
        if template is None and tok_dir != model_dir:
            template = _chat_template(model_dir, tok)
        if template is None:
            raise ProcessorError(
                f"{tok_dir}: no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json's chat_template)"
            )
        tok.chat_template = template
        return cls(
            tok,
            pixel_config_from_dir(model_dir, min_pixels, max_pixels, max_frames),
            _eos_ids(model_dir, tok),
            source=model_dir,
        )

    # ------------------------------------------------------------------ ids
    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    @property
    def video_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(VIDEO_PAD)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def check_model(self, config) -> None:
        """Refuses a model whose special token ids differ from this tokenizer's."""
        tok = self.tokenizer.convert_tokens_to_ids
        for name, token, want in (
            ("image_token_id", IMAGE_PAD, config.image_token_id),
            ("video_token_id", VIDEO_PAD, config.video_token_id),
            ("vision_start_token_id", VISION_START, config.vision_start_token_id),
        ):
            if tok(token) != want:
                raise ProcessorError(
                    f"tokenizer ({self.source or 'given'}) maps {token} to {tok(token)} but the "
                    f"model config's {name} is {want}: they must come from the same model"
                )
        v, p = config.vision, self.pixels
        if (v.patch_size, v.temporal_patch_size, v.spatial_merge_size) != (
            p.patch_size,
            p.temporal_patch_size,
            p.merge_size,
        ):
            raise ProcessorError(
                f"processor patch/temporal/merge sizes ({p.patch_size}, {p.temporal_patch_size}, "
                f"{p.merge_size}) differ from the vision config's ({v.patch_size}, "
                f"{v.temporal_patch_size}, {v.spatial_merge_size})"
            )

    # ------------------------------------------------------------------ media
    def _image(self, value) -> Image.Image:
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, (str, os.PathLike, bytes)):
            return open_image(
                value if isinstance(value, bytes) else os.fspath(value), self.max_image_pixels
            )
        raise MediaError(f"an image must be a PIL image, a path or bytes, found {type(value)}")

    def _video(self, item: Mapping[str, Any]) -> tuple[list[Image.Image], float]:
        value, fps = item.get("video"), item.get("fps")
        if isinstance(value, (str, os.PathLike, bytes)):
            src = value if isinstance(value, bytes) else os.fspath(value)
            media = Media("video", data=src) if isinstance(src, bytes) else Media("video", path=src)
            return load_video(media, self.pixels.max_frames, self.max_image_pixels)
        if isinstance(value, Sequence) and value:
            rate = float(fps) if fps else DEFAULT_FRAMES_FPS
            if all(isinstance(f, Image.Image) for f in value):
                idx = sample_frame_indices(len(value), self.pixels.max_frames)
                return [value[i] for i in idx], rate * len(idx) / len(value)
            frames = tuple(f if isinstance(f, bytes) else os.fspath(f) for f in value)
            media = Media("video", frames=frames, fps=rate)
            return load_video(media, self.pixels.max_frames, self.max_image_pixels)
        raise MediaError("a video must be a path, bytes or a non-empty list of frames")

    # ------------------------------------------------------------------ encoding
    def encode(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool | None = None
    ) -> dict[str, np.ndarray]:
        """One conversation -> ``input_ids``, ``loss_mask`` (the last assistant turn and its
        <|im_end|>), ``prompt_length`` and the vision inputs of its images and videos (in the
        order the chat template places their placeholders: images, then videos).

        ``add_generation_prompt`` defaults to True unless the last message is the assistant's."""
        has_reply = bool(messages) and messages[-1].get("role") == "assistant"
        if add_generation_prompt is not None and add_generation_prompt == has_reply:
            raise ValueError(
                "add_generation_prompt=True needs a conversation that ends before the reply"
                if has_reply
                else "add_generation_prompt=False needs the assistant's reply as the last message"
            )
        unit = self.pixels.merge_size**2
        images, grids, videos, vgrids, spgs = [], [], [], [], []
        plain = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) or content is None:
                plain.append(dict(message))
                continue
            items = []
            for item in content:
                if not isinstance(item, Mapping):
                    raise ValueError(f"a content item must be a mapping, found {item!r}")
                kind = item.get("type")
                if kind == "image" or (kind is None and "image" in item):
                    pixels, grid = process_image(self._image(item.get("image")), self.pixels)
                    images.append(pixels)
                    grids.append(grid)
                    items.append({"type": "image"})
                elif kind == "video" or (kind is None and "video" in item):
                    frames, fps = self._video(item)
                    pixels, grid, seconds_per_grid = process_video(frames, fps, self.pixels)
                    videos.append(pixels)
                    vgrids.append(grid)
                    spgs.append(seconds_per_grid)
                    items.append({"type": "video"})
                elif kind == "text" or "text" in item:
                    items.append({"type": "text", "text": item["text"]})
                else:
                    raise ValueError(f"unknown content item {dict(item)!r}")
            plain.append({**message, "content": items})
        enc = encode_chat(
            self.tokenizer,
            plain,
            [int(np.prod(g)) // unit for g in grids],
            [int(np.prod(g)) // unit for g in vgrids],
        )
        out: dict[str, np.ndarray] = {
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
        return out

    def __call__(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        return_mm_token_type_ids: bool = False,
    ) -> dict[str, np.ndarray]:
        """A batch of conversations (or one) -> ``input_ids``, ``attention_mask`` [B, T] padded on
        ``padding_side``, and the concatenated vision inputs, named as transformers' processor
        names them: ``model(**inputs)`` takes them, and so does ``urt_jax.generate.sample``.
        ``return_mm_token_type_ids`` adds the ids transformers' model needs for its M-RoPE."""
        if conversations and isinstance(conversations[0], Mapping):
            conversations = [conversations]  # one conversation
        rows = [self.encode(c, add_generation_prompt=add_generation_prompt) for c in conversations]
        batch = pad_rows(rows, self.pad_token_id, padding_side)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if return_mm_token_type_ids:
            types = np.zeros_like(ids)
            types[ids == self.image_token_id] = 1
            types[ids == self.video_token_id] = 2
            batch["mm_token_type_ids"] = types * mask
        return batch

    def batch_decode(self, token_ids, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(t, skip_special_tokens) for t in token_ids]

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(
            np.asarray(token_ids).tolist(), skip_special_tokens=skip_special_tokens
        )

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Tokenizer (with its chat template), preprocessor_config.json,
        video_preprocessor_config.json and a generation_config.json with the end-of-turn ids,
        as transformers reads them."""
        from urt_jax.atomic import write_text

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        self.tokenizer.save_pretrained(out_dir)
        for name, data in (
            ("preprocessor_config.json", self.pixels.to_hf_dict()),
            ("video_preprocessor_config.json", self.pixels.video_hf_dict()),
        ):
            write_text(os.path.join(out_dir, name), json.dumps(data, indent=2) + "\n")
        gen = {"eos_token_id": list(self.eos_token_ids), "pad_token_id": self.pad_token_id}
        write_text(
            os.path.join(out_dir, "generation_config.json"), json.dumps(gen, indent=2) + "\n"
        )

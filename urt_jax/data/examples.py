"""Record -> model-ready example (numpy): the record's chat with its media, through the model's
processor (tokens with the target mask, pixels), optional candidate swapping against position
bias."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from urt_jax.data.chat import build_messages
from urt_jax.data.media import DEFAULT_MAX_IMAGE_PIXELS, load_video, open_image
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.records import PreferenceRecord, RecordError
from urt_jax.data.templates import Templates
from urt_jax.data.vl_processor import Processor, ProcessorError, has_tokenizer
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.resources import DEMO_TOKENIZER_DIR


class ExampleTooLong(RecordError):
    pass


@dataclasses.dataclass
class ExampleBuilder:
    """Turns records into examples; holds everything the conversion needs.

    The record's chat (template-rendered or as given) goes through the model's Processor
    (urt_jax.data.vl_processor) with the record's media, loaded under the data root with a pixel
    limit. ``swap_probability``: chance of exchanging the two candidates of a pairwise item (the
    verdict flips with it); decided per record from ``seed`` and the record id, so it is
    reproducible. ``eos_token_ids``: where generation stops (default: <|im_end|>).
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
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        self.chat = Processor(
            self.tokenizer, self.processor, tuple(self.eos_token_ids), self.max_image_pixels
        )
        self.eos_token_ids = self.chat.eos_token_ids
        self.chat.check_model(self.model_config)

    @classmethod
    def for_processor(cls, processor: Processor, templates: Templates, model_config, **kwargs):
        """The builder that feeds records through ``processor`` (a checkpoint's)."""
        return cls(
            processor.tokenizer,
            templates,
            model_config,
            processor.pixels,
            eos_token_ids=processor.eos_token_ids,
            max_image_pixels=processor.max_image_pixels,
            **kwargs,
        )

    def maybe_swap(self, record: PreferenceRecord) -> PreferenceRecord:
        if self.swap_probability <= 0 or record.mode != "pairwise" or record.user_text is not None:
            return record
        if record.reply is not None and self.include_reply:
            return record  # a fixed reasoning text names the candidates by position
        if random.Random(f"{self.seed}:{record.id}").random() < self.swap_probability:
            return record.swapped()
        return record

    def messages(self, record: PreferenceRecord) -> list[dict]:
        """The record's chat with its media loaded into the content items, in order."""
        messages = build_messages(record, self.templates, include_reply=self.include_reply)
        media = iter(record.media)
        for message in messages:
            if isinstance(message["content"], str):
                continue
            for item in message["content"]:
                if item.get("type") not in ("image", "video"):
                    continue
                m = next(media)
                if m.kind == "image":
                    src = m.path if m.path is not None else m.data
                    item["image"] = open_image(src, self.max_image_pixels)
                else:
                    item["video"], item["fps"] = load_video(
                        m, self.processor.max_frames, self.max_image_pixels
                    )
        return messages

    def __call__(self, record: PreferenceRecord) -> dict[str, np.ndarray]:
        record = self.maybe_swap(record)
        out = self.chat.encode(self.messages(record))
        if self.max_length is not None and len(out["input_ids"]) > self.max_length:
            raise ExampleTooLong(
                f"{record.source or record.id}: {len(out['input_ids'])} tokens after "
                f"tokenisation exceeds max_length {self.max_length}"
            )
        out["verdict"] = np.asarray(record.verdict)
        out["record_id"] = np.asarray(record.id)
        return out


def builder_from_config(
    data,
    model_config: Qwen25VLConfig,
    seed: int = 0,
    include_reply: bool = True,
    model_dir: str | None = None,
) -> ExampleBuilder:
    """The ExampleBuilder a run config's data section describes, for the model in ``model_dir``
    (its tokenizer, chat template and pixel settings unless the data section overrides them)."""
    return ExampleBuilder.for_processor(
        run_processor(data, model_dir),
        Templates.load(data.templates),
        model_config,
        max_length=data.max_length,
        include_reply=include_reply,
        swap_probability=data.swap_probability,
        seed=seed,
    )


def run_processor(data, model_dir: str | None) -> Processor:
    """The processor of a run: the checkpoint's (``model_dir``) with the data section's
    ``tokenizer``, ``min_pixels``, ``max_pixels`` and ``max_frames`` where set. A model without a
    directory (a random init from a model config) takes data.tokenizer, else the demo tokenizer
    shipped with the package."""
    if model_dir is not None and not has_tokenizer(model_dir) and data.tokenizer is None:
        raise ProcessorError(
            f"{model_dir}: the checkpoint has no tokenizer files; copy them in from the model "
            "it was trained from, or set data.tokenizer"
        )
    return Processor.from_pretrained(
        model_dir if model_dir is not None else (data.tokenizer or DEMO_TOKENIZER_DIR),
        tokenizer=data.tokenizer,
        min_pixels=data.min_pixels,
        max_pixels=data.max_pixels,
        max_frames=data.max_frames,
    )

"""Chat formatting and tokenisation with label masks, the way transformers' Qwen2.5-VL processor
does it: the chat template renders ``<|vision_start|><|image_pad|><|vision_end|>`` per image, each
pad is expanded to the number of merged vision tokens (t*h*w / merge^2), then the text is
tokenised. Only the assistant reply (and its closing ``<|im_end|>``) is a training target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from urt_jax.data.records import MEDIA_TAG, PreferenceRecord, check_media_tags
from urt_jax.data.templates import Templates

IMAGE_PAD, VIDEO_PAD, IM_END = "<|image_pad|>", "<|video_pad|>", "<|im_end|>"


def build_messages(
    record: PreferenceRecord, templates: Templates, include_reply: bool = True
) -> list[dict]:
    """HF chat messages: the record's system prompt (if any), one user turn and the reply.

    The user content holds one ``{"type": "image"}``/``{"type": "video"}`` item per medium, in
    ``record.media`` order, and the task text: media first, then the text; or, when a released
    user text carries ``<image>``/``<video>`` tags, the media at the tags' places with the text
    between them kept verbatim (as LLaMA-Factory renders such a text).
    """
    messages = []
    if record.system is not None:
        messages.append({"role": "system", "content": record.system})
    messages.append({"role": "user", "content": user_content(record, templates.render(record))})
    if include_reply and record.reply is not None:
        messages.append({"role": "assistant", "content": record.reply})
    return messages


def user_content(record: PreferenceRecord, text: str) -> list[dict]:
    """The user turn's content items for ``text``: interleaved at its tags when the record's
    text came from the source (``user_text``) and has tags, else media first."""
    kinds = tuple(m.kind for m in record.media)
    if record.user_text is None or not MEDIA_TAG.search(text):
        return [{"type": k} for k in kinds] + [{"type": "text", "text": text}]
    check_media_tags(text, kinds, record.source or record.id)
    content = []
    for i, piece in enumerate(MEDIA_TAG.split(text)):
        if i % 2:  # the split keeps each tag's kind at the odd places
            content.append({"type": piece})
        elif piece:
            content.append({"type": "text", "text": piece})
    return content


def expand_placeholders(text: str, image_tokens: Sequence[int], video_tokens: Sequence[int]) -> str:
    """Replaces the k-th ``<|image_pad|>`` (``<|video_pad|>``) with image_tokens[k] copies."""
    for pad, counts in ((IMAGE_PAD, image_tokens), (VIDEO_PAD, video_tokens)):
        parts = text.split(pad)
        if len(parts) - 1 != len(counts):
            raise ValueError(
                f"the chat has {len(parts) - 1} {pad} placeholders but "
                f"{len(counts)} media of that kind were given"
            )
        out = [parts[0]]
        for n, rest in zip(counts, parts[1:], strict=True):
            out.append(pad * int(n) + rest)
        text = "".join(out)
    return text


@dataclasses.dataclass
class Encoded:
    input_ids: np.ndarray  # [T] int32
    loss_mask: np.ndarray  # [T] bool: token is a training target (assistant reply + <|im_end|>)
    prompt_length: int  # tokens before the reply (the generation prompt)


def encode_chat(
    tokenizer,
    messages: list[dict],
    image_tokens: Sequence[int] = (),
    video_tokens: Sequence[int] = (),
) -> Encoded:
    """Token ids and target mask of a chat whose last message may be the assistant reply."""
    has_reply = messages[-1]["role"] == "assistant"
    prompt_msgs = messages[:-1] if has_reply else messages
    prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    prompt = expand_placeholders(prompt, image_tokens, video_tokens)
    if not has_reply:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return Encoded(np.asarray(ids, np.int32), np.zeros(len(ids), bool), len(ids))
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    full = expand_placeholders(full, image_tokens, video_tokens)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template renders the reply's prompt differently from the "
            "generation prompt; cannot locate the reply"
        )
    reply = messages[-1]["content"]
    start, end = len(prompt), len(prompt) + len(reply) + len(IM_END)
    if full[start:end] != reply + IM_END:
        raise ValueError("the chat template does not close the reply with <|im_end|>")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    mask = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
    prompt_len = int(np.argmax(mask)) if mask.any() else len(mask)
    return Encoded(np.asarray(enc["input_ids"], np.int32), mask, prompt_len)

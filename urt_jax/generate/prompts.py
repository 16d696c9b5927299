"""Prompt batches for generation: records -> prompt-only examples -> completions as text."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from urt_jax.data.examples import ExampleTooLong
from urt_jax.data.records import PreferenceRecord
from urt_jax.data.vl_processor import pad_rows


def end_of_turn_ids(tokenizer, to_example=None) -> list[int]:
    """Where generation stops: the example builder's (the checkpoint's generation_config.json
    eos ids with <|im_end|>), else <|im_end|>."""
    ids = getattr(to_example, "eos_token_ids", None)
    return list(ids) if ids else [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def prompt_example(
    record: PreferenceRecord, to_example, prefix_ids: np.ndarray | None = None
) -> dict:
    """The record's prompt-only example (its reply ignored), followed by ``prefix_ids``."""
    e = to_example(dataclasses.replace(record, reply=None))
    if prefix_ids is not None:
        e["input_ids"] = np.concatenate([e["input_ids"], prefix_ids]).astype(np.int32)
    return e


def prompt_examples(
    records: Sequence[PreferenceRecord], to_example, prefix_ids: np.ndarray | None = None
) -> list[dict]:
    """Prompt-only examples of the records (``prompt_example`` of each)."""
    return [prompt_example(r, to_example, prefix_ids) for r in records]


def completion_texts(tokenizer, out, prefix: str = "") -> list[str]:
    """The sampled completions of a SampleOutput as text, special tokens dropped."""
    return [
        prefix + tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(out.tokens, out.lengths, strict=True)
    ]


def complete(
    model,
    tokenizer,
    records: Sequence[PreferenceRecord],
    to_example,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    top_p: float = 1.0,
    reply_prefix: str = "",
    on_too_long: Callable[[int, ExampleTooLong], None] | None = None,
) -> list[list[str] | None]:
    """``num_samples`` completions per record, as text (``reply_prefix`` included), generated in
    chunks of ``batch_size`` prompts until an end-of-turn id (``end_of_turn_ids``).
    ``to_example`` must build prompt-only examples; the records' own replies are ignored;
    ``reply_prefix`` starts every reply. A prompt longer than the builder's ``max_length``
    raises ExampleTooLong, or with ``on_too_long`` is passed to it with its index and left out
    (its entry is None): the chunks stay full, so the compiled shapes do not change."""
    from urt_jax.generate.sampler import sample

    prefix_ids = np.asarray(tokenizer(reply_prefix, add_special_tokens=False)["input_ids"])
    eos = end_of_turn_ids(tokenizer, to_example)
    pad = tokenizer.pad_token_id or 0
    out: list[list[str] | None] = [None] * len(records)

    def generate(indices: list[int], examples: list[dict]) -> None:
        gen = sample(
            model,
            pad_rows(examples, pad),
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_token_ids=eos,
            seed=seed + indices[0],
        )
        texts = completion_texts(tokenizer, gen, reply_prefix)
        for k, i in enumerate(indices):
            out[i] = texts[k * num_samples : (k + 1) * num_samples]

    indices, examples = [], []
    for i, record in enumerate(records):
        try:
            example = prompt_example(record, to_example, prefix_ids)
        except ExampleTooLong as e:
            if on_too_long is None:
                raise
            on_too_long(i, e)
            continue
        indices.append(i)
        examples.append(example)
        if len(examples) == batch_size:
            generate(indices, examples)
            indices, examples = [], []
    if examples:
        generate(indices, examples)
    return out

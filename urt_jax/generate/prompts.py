"""Prompt batches for generation: examples (prompt only) -> the HF processor's batch format."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from urt_jax.data.records import PreferenceRecord


def processor_batch(examples: Sequence[dict], pad_id: int) -> dict[str, np.ndarray]:
    """Left-padded input_ids/attention_mask plus concatenated vision inputs, in row order."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = np.full((len(examples), length), pad_id, np.int64)
    mask = np.zeros((len(examples), length), np.int64)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, length - n :] = e["input_ids"]
        mask[i, length - n :] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    for key in (
        "pixel_values",
        "image_grid_thw",
        "pixel_values_videos",
        "video_grid_thw",
        "second_per_grid_ts",
    ):
        parts = [e[key] for e in examples if key in e]
        if parts:
            batch[key] = np.concatenate(parts)
    return batch


def prompt_batches(
    records: Sequence[PreferenceRecord], to_example, batch_size: int, pad_id: int
) -> Iterator[tuple[list[PreferenceRecord], dict]]:
    """(records, batch) chunks; to_example must build prompt-only examples."""
    for start in range(0, len(records), batch_size):
        chunk = [records[i] for i in range(start, min(start + batch_size, len(records)))]
        yield chunk, processor_batch([to_example(r) for r in chunk], pad_id)

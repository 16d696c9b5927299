"""grain input pipelines: deterministic by seed, sharded by process, checkpointable.

The source is a random-access sequence of records (a parsed data file, or a TFDS array_record
dataset through ``tfds.data_source``). Each process takes the records ``i::n`` (disjoint, covering
the data), shuffles them with the seed (a new permutation per epoch), converts them to examples
and collates fixed-shape batches. The iterator's ``get_state()``/``set_state()`` are saved with
the training checkpoint, so a resumed run continues with the exact next batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import grain
import jax

from urt_jax.data.batching import Batch, Buckets, collate
from urt_jax.data.readers import read_records
from urt_jax.data.records import PreferenceRecord, RecordError
from urt_jax.model.config import Qwen25VLConfig

log = logging.getLogger(__name__)


class InvalidDataError(ValueError):
    pass


def load_records(
    path: str, data_root: str | None = None, skip_invalid: bool = False, max_errors_shown: int = 5
) -> list[PreferenceRecord]:
    """All valid records of a data file. Bad records stop the run unless ``skip_invalid``, which
    logs how many were dropped and the first errors."""
    good, bad = [], []
    for item in read_records(path, data_root):
        (bad if isinstance(item, RecordError) else good).append(item)
    if bad:
        shown = "\n  ".join(str(e) for e in bad[:max_errors_shown])
        message = f"{path}: {len(bad)} invalid record(s) of {len(bad) + len(good)}:\n  {shown}"
        if not skip_invalid:
            raise InvalidDataError(
                message + "\n(set data.skip_invalid=true to drop them; "
                "`urt-jax data check FILE` lists them all)"
            )
        log.warning("%s\nskipped (data.skip_invalid=true)", message)
    return good


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1  # None: repeat forever
    drop_remainder: bool = True
    padding_side: str = "right"
    buckets: Buckets = dataclasses.field(default_factory=Buckets)
    process_index: int | None = None  # default: jax.process_index()
    process_count: int | None = None  # default: jax.process_count()


def make_dataset(
    source: Sequence,
    to_example: Callable[[object], dict],
    config: Qwen25VLConfig,
    options: PipelineOptions,
    pad_id: int = 0,
) -> grain.IterDataset:
    """An IterDataset of Batch objects; iterate it with ``iter(...)`` (checkpointable)."""
    index = jax.process_index() if options.process_index is None else options.process_index
    count = jax.process_count() if options.process_count is None else options.process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    ds = grain.MapDataset.source(source)[index::count]
    if len(ds) < options.batch_size and options.drop_remainder:
        raise ValueError(
            f"process {index} has {len(ds)} records, fewer than one batch of {options.batch_size}"
        )
    if options.shuffle:
        ds = ds.shuffle(seed=options.seed)  # grain draws a new permutation for every epoch
    if options.num_epochs != 1:
        ds = ds.repeat(options.num_epochs)
    ds = ds.map(to_example)

    def batch_fn(examples: Sequence[dict]) -> Batch:
        return collate(examples, config, options.buckets, pad_id, options.padding_side)

    return ds.to_iter_dataset().batch(
        options.batch_size, drop_remainder=options.drop_remainder, batch_fn=batch_fn
    )

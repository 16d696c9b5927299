"""grain input pipelines: deterministic by seed, sharded by process, checkpointable.

The source is a random-access sequence of records (a parsed data file, or a TFDS array_record
dataset through ``tfds.data_source``). All processes walk one seeded global order (a new
permutation per epoch) in global batches and each takes its own rows of every batch (disjoint,
covering the data), converts them to examples and collates fixed-shape batches. The iterator's
``get_state()``/``set_state()`` are saved with the training checkpoint, so a resumed run
continues with the exact next batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import grain
import jax

from urt_jax.data.batching import Batch, Buckets, collate
from urt_jax.data.media import check_all_media
from urt_jax.data.media_cache import CheckedMedia
from urt_jax.data.readers import read_records
from urt_jax.data.records import PreferenceRecord, RecordError
from urt_jax.model.config import Qwen25VLConfig

log = logging.getLogger(__name__)


class InvalidDataError(ValueError):
    pass


def read_checked_items(
    path: str, data_root: str | None = None, labelled: bool = True
) -> list[PreferenceRecord | RecordError]:
    """Every item of a data file or dataset YAML in order: a record, or the RecordError (naming
    its JSON file and line) of one that is malformed or whose media cannot be used. Every media
    file of every record is opened here (``media.check_all_media``), not when its batch
    arrives; files that passed before, unchanged since, are not opened again
    (``media_cache.CheckedMedia``)."""
    items = list(read_records(path, data_root, labelled))
    valid = [i for i, item in enumerate(items) if not isinstance(item, RecordError)]
    found = check_all_media([items[i] for i in valid], checked=CheckedMedia())
    for k, why in found.items():
        items[valid[k]] = RecordError(f"{items[valid[k]].source}: {why}")
    return items


def read_checked(path: str, data_root: str | None = None) -> tuple[list, list[RecordError]]:
    """(valid records, errors) of ``read_checked_items``."""
    items = read_checked_items(path, data_root)
    bad = [item for item in items if isinstance(item, RecordError)]
    return [item for item in items if not isinstance(item, RecordError)], bad


def load_records(
    path: str, data_root: str | None = None, skip_invalid: bool = False, max_errors_shown: int = 5
) -> list[PreferenceRecord]:
    """All valid records of a data file or dataset YAML (``read_checked``). Bad records stop the
    run unless ``skip_invalid``, which logs how many were dropped and the first errors."""
    good, bad = read_checked(path, data_root)
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
    """An IterDataset of Batch objects; iterate it with ``iter(...)`` (checkpointable).

    The order of records is global: one seeded permutation per epoch, the same on every process,
    cut into global batches of ``batch_size * process_count``; process p takes rows
    [p * batch_size, (p + 1) * batch_size) of each. So the global batches, and the losses, do not
    depend on how many processes share the work.
    """
    index = jax.process_index() if options.process_index is None else options.process_index
    count = jax.process_count() if options.process_count is None else options.process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    local, global_batch = options.batch_size, options.batch_size * count
    if len(source) < global_batch and (options.drop_remainder or count > 1):
        raise ValueError(f"{len(source)} records are fewer than one global batch of {global_batch}")
    order = grain.MapDataset.range(len(source))
    if options.shuffle:
        order = order.shuffle(seed=options.seed)  # grain draws a new permutation every epoch
    if options.num_epochs != 1:
        order = order.repeat(options.num_epochs)
    if count == 1 and not options.drop_remainder:
        n_local = len(order)
    else:  # a trailing partial global batch is dropped
        n_local = len(order) // global_batch * local

    def record(j: int):
        k, r = divmod(j, local)
        return source[order[k * global_batch + index * local + r]]

    ds = grain.MapDataset.range(n_local).map(record).map(to_example)

    def batch_fn(examples: Sequence[dict]) -> Batch:
        return collate(examples, config, options.buckets, pad_id, options.padding_side)

    return ds.to_iter_dataset().batch(
        options.batch_size, drop_remainder=options.drop_remainder, batch_fn=batch_fn
    )

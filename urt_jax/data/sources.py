"""Opening the record source a config names: a data file (JSONL/JSON), a dataset YAML listing
data files (``datasets: [{json_path, image_folder, sampling_strategy}]``) or
``tfds:NAME[/SPLIT]``."""

from __future__ import annotations

from collections.abc import Sequence

from urt_jax.data.pipeline import load_records
from urt_jax.data.records import PreferenceRecord
from urt_jax.data.tfds_source import TFDSRecords, parse_tfds_spec


def open_records(
    spec: str,
    data_root: str | None = None,
    tfds_data_dir: str | None = None,
    skip_invalid: bool = False,
) -> Sequence[PreferenceRecord]:
    """A random-access sequence of records. Files and dataset YAMLs are validated up front (bad
    records stop the run unless skip_invalid); TFDS datasets were validated when they were
    written. A YAML entry's image_folder overrides ``data_root`` for its file."""
    if spec.startswith("tfds:"):
        name, split = parse_tfds_spec(spec)
        return TFDSRecords(name, split, tfds_data_dir)
    return load_records(spec, data_root, skip_invalid=skip_invalid)


def count_records(spec: str, data_root: str | None = None, tfds_data_dir: str | None = None) -> int:
    """How many valid records ``spec`` holds, their fields checked but not their media: a cheap
    count for deciding whether a stage has anything to do (the stage's own ``open_records``
    checks everything, media included, before its first step)."""
    if spec.startswith("tfds:"):
        return len(open_records(spec, data_root, tfds_data_dir))
    from urt_jax.data.readers import read_records
    from urt_jax.data.records import RecordError

    return sum(not isinstance(r, RecordError) for r in read_records(spec, data_root))

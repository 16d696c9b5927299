"""A benchmark's published files and their rows: parquet (pyarrow, in batches), CSV and JSON/JSONL.

Rows come back as dicts in file order, numbered from 0 within their file (as ``dataset[N]`` numbers
them in 🤗 datasets). Nothing is unpickled and nothing is fetched.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterator

from urt_jax.data.readers import iter_json_objects

EXTENSIONS = (".parquet", ".csv", ".json", ".jsonl")

# Where each benchmark's rows are in a downloaded folder, in order of preference: the first
# pattern that matches any file is used, its files sorted (the shards of one split).
LAYOUTS: dict[str, tuple[str, ...]] = {
    "vl-rewardbench": ("data/test-*.parquet", "test-*.parquet", "*.parquet", "data.json"),
    "genai-bench-image": (
        "image_generation/test-*.parquet",
        "image_generation/test/*.parquet",
        "test-*.parquet",
        "test/*.parquet",
    ),
    "genai-bench-video": (
        "video_generation/test-*.parquet",
        "video_generation/test/*.parquet",
        "test-*.parquet",
        "test/*.parquet",
        "data.json",
    ),
    "videogen-rewardbench": ("videogen-rewardbench.csv", "*.csv", "*.parquet"),
}


class SourceError(ValueError):
    """A source that cannot be read at all (a missing folder, an unknown file type, ...)."""


def source_files(name: str, src: str) -> list[str]:
    """The files to read: ``src`` itself, or the files of ``src`` (a folder) that the first
    matching pattern of the benchmark's layout names, sorted."""
    if os.path.isfile(src):
        if not src.lower().endswith(EXTENSIONS):
            raise SourceError(f"{src}: not a {'/'.join(e[1:] for e in EXTENSIONS)} file")
        return [src]
    if not os.path.isdir(src):
        raise SourceError(f"{src}: no such file or folder")
    for pattern in LAYOUTS[name]:
        found = sorted(p for p in glob.glob(os.path.join(src, pattern)) if os.path.isfile(p))
        if found:
            return found
    raise SourceError(f"{src}: no {name} files found (looked for {', '.join(LAYOUTS[name])})")


def iter_rows(path: str) -> Iterator[tuple[int, dict | str]]:
    """(row number, row) for each row of a file; a row that is not an object comes back as a
    message saying what it is instead."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif lower.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from enumerate(csv.DictReader(f))
    else:
        for number, (_, obj) in enumerate(iter_json_objects(path)):
            if isinstance(obj, Exception):
                yield number, str(obj)
            elif not isinstance(obj, dict):
                yield number, f"expected a JSON object, found {type(obj).__name__}"
            else:
                yield number, obj


def _parquet_rows(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: cannot read the parquet file ({e})") from None
    number = 0
    batches = parquet.iter_batches(batch_size=64)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(
                f"{path}: cannot read the rows after row {number - 1} ({e})"
            ) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield number, row
            number += 1

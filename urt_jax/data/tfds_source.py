"""TFDS: write preference records to an array_record TFDS dataset, and read one back as a
random-access source for grain (``tfds:NAME`` or ``tfds:NAME/SPLIT`` in a config).

No TensorFlow is involved: each example stores the record as JSON text plus its media as encoded
bytes (the image, video or frame files exactly as they were), which are decoded with PIL/PyAV when
the example is built. ``tfds.data_source`` reads the array_record shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from urt_jax.data.records import BenchmarkTag, Media, PreferenceRecord

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _read(src: str | bytes) -> bytes:
    if isinstance(src, bytes):
        return src
    with open(src, "rb") as f:
        return f.read()


def record_to_example(record: PreferenceRecord) -> dict:
    """{"record": JSON text, "media": [bytes, ...]} with media replaced by blob indices."""
    blobs: list[bytes] = []
    media = []
    for m in record.media:
        entry: dict = {"kind": m.kind}
        if m.frames is not None:
            entry["frames"] = list(range(len(blobs), len(blobs) + len(m.frames)))
            blobs += [_read(f) for f in m.frames]
            entry["fps"] = m.fps
        else:
            entry["blob"] = len(blobs)
            blobs.append(_read(m.path if m.path is not None else m.data))
        media.append(entry)
    d = dataclasses.asdict(record)
    d["media"] = media
    d["answers"] = list(record.answers)
    return {"record": json.dumps(d), "media": blobs}


def example_to_record(example: Mapping) -> PreferenceRecord:
    raw = example["record"]
    d = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    blobs = list(example["media"])
    media = []
    for entry in d.pop("media"):
        if "frames" in entry:
            media.append(
                Media(
                    entry["kind"],
                    frames=tuple(bytes(blobs[i]) for i in entry["frames"]),
                    fps=entry.get("fps"),
                )
            )
        else:
            media.append(Media(entry["kind"], data=bytes(blobs[entry["blob"]])))
    d["answers"] = tuple(d["answers"])
    if d.get("benchmark") is not None:
        d["benchmark"] = BenchmarkTag(**d["benchmark"])
    return PreferenceRecord(**d, media=tuple(media))


def _builder_class(name: str):
    import tensorflow_datasets as tfds

    if not _NAME.match(name):
        raise ValueError(f"TFDS dataset name {name!r} must be snake_case ([a-z][a-z0-9_]*)")

    class PreferenceDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "urt-jax preference records with encoded media."}

        def __init__(
            self, *, splits: Mapping[str, Sequence[PreferenceRecord]] | None = None, **kwargs
        ):
            self._splits = splits or {}
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Preference records (urt-jax JSON) with their media as bytes.",
                disable_shuffling=True,  # keep the records' order: index i is record i
                features=tfds.features.FeaturesDict(
                    {
                        "record": tfds.features.Text(),
                        "media": tfds.features.Sequence(
                            tfds.features.Tensor(shape=(), dtype=np.object_)
                        ),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                split: self._generate_examples(records) for split, records in self._splits.items()
            }

        def _generate_examples(self, records: Iterable[PreferenceRecord]):
            for i, record in enumerate(records):
                yield f"{i:08d}-{record.id}", record_to_example(record)

    PreferenceDataset.name = name
    return PreferenceDataset


def build_tfds(name: str, splits: Mapping[str, Sequence[PreferenceRecord]], data_dir: str) -> str:
    """Writes the records as TFDS dataset ``name`` (array_record) under data_dir."""
    builder = _builder_class(name)(splits=splits, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)


class TFDSRecords(Sequence):
    """A random-access view of a TFDS split as PreferenceRecords (for grain MapDataset)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        try:
            sources = tfds.data_source(name, data_dir=data_dir)
        except Exception as e:  # tfds raises several types for a missing dataset
            raise FileNotFoundError(f"tfds:{name}: cannot open under {data_dir}: {e}") from None
        if split not in sources:
            raise ValueError(f"tfds:{name}: no split {split!r}; has {sorted(sources)}")
        self._source = sources[split]

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"tfds:{self.name}/{self.split}: index {index} out of range")
        record = example_to_record(self._source[index])
        return dataclasses.replace(record, source=f"tfds:{self.name}/{self.split}[{index}]")


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """'tfds:NAME' or 'tfds:NAME/SPLIT' -> (name, split)."""
    body = spec.removeprefix("tfds:")
    name, _, split = body.partition("/")
    return name, split or "train"

"""TFDS: records written to an array_record dataset read back equal, through grain too."""

import dataclasses
import os

import numpy as np
import pytest

from urt_jax.data.batching import Buckets
from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.pipeline import PipelineOptions, load_records, make_dataset
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.data.templates import Templates
from urt_jax.data.tfds_source import TFDSRecords, build_tfds, parse_tfds_spec
from urt_jax.data.tokenizer import load_tokenizer
from urt_jax.model.config import Qwen25VLConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("tfds")
    paths = write_synthetic(
        str(out / "raw"),
        n_train=12,
        n_heldout=4,
        seed=5,
        cfg=SyntheticConfig(image_size=56, num_frames=2),
    )
    train = load_records(paths["train"], str(out / "raw"))
    heldout = load_records(paths["heldout"], str(out / "raw"))
    build_tfds("urt_synthetic", {"train": train, "heldout": heldout}, str(out / "tfds"))
    return train, heldout, str(out / "tfds")


def _media_bytes(m):
    if m.frames is not None:
        return [open(f, "rb").read() if isinstance(f, str) else f for f in m.frames]
    return open(m.path, "rb").read() if m.path else m.data


def test_records_round_trip(written):
    train, heldout, data_dir = written
    for split, records in (("train", train), ("heldout", heldout)):
        source = TFDSRecords("urt_synthetic", split, data_dir)
        assert len(source) == len(records)
        for want, got in zip(records, source, strict=True):
            strip = dict(media=(), source="")
            assert dataclasses.replace(got, **strip) == dataclasses.replace(want, **strip)
            assert [_media_bytes(m) for m in got.media] == [_media_bytes(m) for m in want.media]


def test_grain_batches_equal_file_source(written):
    train, _, data_dir = written
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    builder = ExampleBuilder(
        load_tokenizer(),
        Templates.load(),
        config,
        ProcessorConfig(max_pixels=56 * 56, max_frames=2),
    )
    opts = PipelineOptions(
        batch_size=4, seed=1, buckets=Buckets(lengths=(512, 1024)), process_index=0, process_count=1
    )
    from_file = list(make_dataset(train, builder, config, opts))
    from_tfds = list(
        make_dataset(TFDSRecords("urt_synthetic", "train", data_dir), builder, config, opts)
    )
    assert len(from_file) == len(from_tfds) == 3
    for a, b in zip(from_file, from_tfds, strict=True):
        assert a.record_ids == b.record_ids
        np.testing.assert_array_equal(a.inputs.input_ids, b.inputs.input_ids)
        np.testing.assert_array_equal(a.inputs.pixel_values, b.inputs.pixel_values)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)


def test_spec_and_errors(written, tmp_path):
    assert parse_tfds_spec("tfds:urt_synthetic") == ("urt_synthetic", "train")
    assert parse_tfds_spec("tfds:urt_synthetic/heldout") == ("urt_synthetic", "heldout")
    with pytest.raises(ValueError, match="no split 'valid'"):
        TFDSRecords("urt_synthetic", "valid", written[2])
    with pytest.raises(FileNotFoundError, match="tfds:nothing_here"):
        TFDSRecords("nothing_here", "train", str(tmp_path))

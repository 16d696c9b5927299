"""The safetensors reader/writer against the reference implementation (safetensors.torch)."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from urt_jax.model.safetensors_io import SafetensorsCheckpoint, SafetensorsError, save_safetensors


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": rng.standard_normal((4, 2, 3)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "strided": rng.standard_normal((6, 4)).astype(np.float32)[::2, ::-1],
    }


def test_round_trip_and_torch_reads_ours(tmp_path):
    tensors = _tensors()
    save_safetensors(tensors, tmp_path)
    with SafetensorsCheckpoint.open(tmp_path) as ckpt:
        assert ckpt.keys() == sorted(tensors)
        for name, want in tensors.items():
            got = ckpt.get(name)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(
                got.reshape(-1).view(np.uint8),
                np.ascontiguousarray(want).reshape(-1).view(np.uint8),
            )
    theirs = load_file(str(tmp_path / "model.safetensors"))
    assert theirs["bf16"].dtype == torch.bfloat16
    np.testing.assert_array_equal(
        theirs["bf16"].view(torch.int16).numpy(), tensors["bf16"].view(np.int16)
    )
    np.testing.assert_array_equal(theirs["strided"].numpy(), tensors["strided"])


def test_we_read_torch_files_bit_exact(tmp_path):
    torch.manual_seed(0)
    want = {
        "a": torch.randn(4, 3, dtype=torch.bfloat16),
        "b": torch.randn(5),
        "c": torch.arange(3, dtype=torch.int32),
    }
    save_file(want, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    ckpt = SafetensorsCheckpoint.open(tmp_path / "x.safetensors")
    assert ckpt.metadata == {"format": "pt"}
    np.testing.assert_array_equal(ckpt.get("a").view(np.int16), want["a"].view(torch.int16).numpy())
    np.testing.assert_array_equal(ckpt.get("b"), want["b"].numpy())
    np.testing.assert_array_equal(ckpt.get("c"), want["c"].numpy())


def test_sharded_save_and_stale_files_removed(tmp_path):
    tensors = {f"layer.{i}": np.full((64,), i, np.float32) for i in range(10)}  # 256 B each
    files = save_safetensors(tensors, tmp_path, max_shard_bytes=600)
    assert len(files) == 5 and files[0] == "model-00001-of-00005.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2560
    assert set(index["weight_map"]) == set(tensors)
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    for name, want in tensors.items():
        np.testing.assert_array_equal(ckpt.get(name), want)
    # saving again unsharded removes the shards and the index of the earlier save
    save_safetensors(tensors, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def _raw_file(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "header,data,match",
    [
        (
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 4,
            r"w.*outside the data area",
        ),
        (
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            r"w.*span 8 bytes, expected 12",
        ),
        ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", r"w.*unknown.*Q7"),
    ],
)
def test_corrupt_headers_are_named(tmp_path, header, data, match):
    path = _raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=match) as err:
        SafetensorsCheckpoint.open(path)
    assert "bad.safetensors" in str(err.value)


def test_truncated_and_missing_files(tmp_path):
    (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(SafetensorsError, match=r"t\.safetensors.*truncated"):
        SafetensorsCheckpoint.open(tmp_path / "t.safetensors")
    (tmp_path / "j.safetensors").write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(SafetensorsError, match=r"j\.safetensors.*not valid JSON"):
        SafetensorsCheckpoint.open(tmp_path / "j.safetensors")
    shard_dir = tmp_path / "sharded"
    save_safetensors(
        {"a": np.zeros(64, np.float32), "b": np.ones(64, np.float32)},
        shard_dir,
        max_shard_bytes=300,
    )
    (shard_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SafetensorsError, match=r"shard 'model-00002-of-00002.safetensors'.*'b'"):
        SafetensorsCheckpoint.open(shard_dir)


def test_unknown_tensor_lists_close_names(tmp_path):
    save_safetensors({"model.norm.weight": np.ones(4, np.float32)}, tmp_path)
    with pytest.raises(KeyError, match=r"model\.norm\.weight"):
        SafetensorsCheckpoint.open(tmp_path).get("model.norm.weight2")

"""The safetensors reader/writer, checked against the reference (safetensors.torch)."""

import gc
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from urt_jax.model.safetensors_io import (
    SafetensorsCheckpoint,
    SafetensorsError,
    TensorNotFoundError,
    dtype_to_str,
    save_safetensors,
    str_to_dtype,
)


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bytes of an array in C order (compares NaNs and -0.0 bit-exactly)."""
    a = np.asarray(a)
    return np.ascontiguousarray(a.reshape(-1)).view(np.uint8)


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    bf16 = rng.standard_normal((4, 2, 3)).astype(ml_dtypes.bfloat16)
    bf16[0, 0, :] = [np.nan, -0.0, np.inf]
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": bf16,
        "f64": rng.standard_normal((2, 2)),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
        "i32": np.arange(5, dtype=np.int32),
        "i8": np.array([-128, 0, 127], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([[True, False, True], [False, False, True]]),
        "scalar_f32": np.array(3.5, np.float32),
        "scalar_bf16": np.array(-1.25, ml_dtypes.bfloat16),
        "scalar_bool": np.array(True),
        "empty": np.zeros((0, 4), np.float32),
        "empty_bf16": np.zeros((3, 0), ml_dtypes.bfloat16),
        "strided": rng.standard_normal((6, 4)).astype(np.float32)[::2, ::-1],
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "big_endian": np.arange(4, dtype=">i4"),
    }


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# ------------------------------------------------------------------------------ round trips
def test_round_trip_bit_exact(tmp_path):
    tensors = _tensors()
    files = save_safetensors(tensors, tmp_path)
    assert files == ["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temp files left
    with SafetensorsCheckpoint.open(tmp_path) as ckpt:
        assert ckpt.keys() == sorted(tensors)
        assert len(ckpt) == len(tensors) and list(ckpt) == sorted(tensors)
        assert ckpt.metadata == {"format": "pt"}
        assert ckpt.files == [str(tmp_path / "model.safetensors")]
        for name, want in tensors.items():
            got = ckpt.get(name)
            assert ckpt.shape(name) == got.shape == want.shape, name
            assert ckpt.dtype(name) == got.dtype == want.dtype.newbyteorder("<"), name
            np.testing.assert_array_equal(_bits(got), _bits(want.astype(got.dtype)), err_msg=name)
    assert str(SafetensorsCheckpoint.open(tmp_path).dtype("bf16")) == "bfloat16"


def test_header_layout_and_metadata(tmp_path):
    save_safetensors({"b": np.ones(3, np.float16), "a": np.ones(1, np.int8)}, tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}
    assert header["b"] == {"dtype": "F16", "shape": [3], "data_offsets": [1, 7]}
    assert len(raw) == 8 + n + 7

    out = tmp_path / "meta"
    save_safetensors({"x": np.zeros(2, np.float32)}, out, metadata={"step": "7"})
    assert SafetensorsCheckpoint.open(out).metadata == {"step": "7"}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"step": "7"}


def test_slices_and_arrays_outlive_close(tmp_path):
    w = np.arange(60, dtype=np.float32).reshape(6, 10)
    b = np.arange(24).astype(ml_dtypes.bfloat16).reshape(2, 3, 4)
    save_safetensors({"w": w, "b": b, "v": np.ones(3)}, tmp_path)
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    a = ckpt.get("w")
    rows = ckpt.get_slice("w", (slice(2, 4),))
    block = ckpt.get_slice("w", (slice(1, 5), slice(3, 7)))
    bf = ckpt.get_slice("b", (slice(1, 2), slice(None), slice(2, 4)))
    np.testing.assert_array_equal(rows, w[2:4])
    np.testing.assert_array_equal(block, w[1:5, 3:7])
    assert bf.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(_bits(bf), _bits(b[1:2, :, 2:4]))
    ckpt.close()
    np.testing.assert_array_equal(a, w)  # still valid
    np.testing.assert_array_equal(block, w[1:5, 3:7])
    for call in (lambda: ckpt.get("w"), lambda: ckpt.get_slice("w", (slice(0, 1),))):
        with pytest.raises(SafetensorsError, match="closed"):
            call()
    del a
    gc.collect()


def test_jax_arrays_are_saved(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    tensors = {"x": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3), "y": jnp.float32(2.0)}
    save_safetensors(tensors, tmp_path)
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    np.testing.assert_array_equal(_bits(ckpt.get("x")), _bits(np.asarray(tensors["x"])))
    assert ckpt.shape("y") == () and ckpt.get("y") == 2.0


def test_torch_reads_our_files(tmp_path):
    tensors = _tensors()
    save_safetensors(tensors, tmp_path)
    theirs = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(theirs) == sorted(tensors)
    assert theirs["bf16"].dtype == torch.bfloat16
    np.testing.assert_array_equal(
        theirs["bf16"].view(torch.int16).numpy(), tensors["bf16"].view(np.int16)
    )
    for name, want in tensors.items():
        got = _to_numpy(theirs[name])
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(_bits(got), _bits(want.astype(got.dtype)), err_msg=name)


def test_we_read_torch_files_bit_exact(tmp_path):
    torch.manual_seed(0)
    want = {
        "bf16": torch.randn(4, 3, dtype=torch.bfloat16),
        "f32": torch.randn(5),
        "f16": torch.randn(2, 2, dtype=torch.float16),
        "f64": torch.randn(3, dtype=torch.float64),
        "i64": torch.arange(-3, 3, dtype=torch.int64),
        "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16),
        "u8": torch.arange(3, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(1.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 2, dtype=torch.bfloat16),
    }
    path = tmp_path / "x.safetensors"
    save_file(want, str(path), metadata={"format": "pt"})
    with SafetensorsCheckpoint.open(path) as ckpt:
        assert ckpt.metadata == {"format": "pt"}
        assert ckpt.keys() == sorted(want)
        assert ckpt.dtype("bf16") == np.dtype(ml_dtypes.bfloat16)
        for name, t in want.items():
            got = ckpt.get(name)
            assert got.shape == tuple(t.shape), name
            assert got.dtype.itemsize == t.element_size(), name
            ref = t.reshape(-1).view(torch.uint8).numpy()  # torch's own bytes
            np.testing.assert_array_equal(_bits(got), ref, err_msg=name)


def test_float8_is_refused_by_name(tmp_path):
    path = tmp_path / "q.safetensors"
    save_file({"w": torch.randn(4).to(torch.float8_e4m3fn)}, str(path))
    with SafetensorsCheckpoint.open(path) as ckpt:
        assert ckpt.shape("w") == (4,)
        for call in (ckpt.dtype, ckpt.get):
            with pytest.raises(SafetensorsError, match=r"q\.safetensors: tensor 'w' is F8_E4M3"):
                call("w")


# ------------------------------------------------------------------------------ sharding
def test_sharded_save_is_transformers_layout(tmp_path):
    tensors = {f"layer.{i}.w": np.full((64,), i, np.float32) for i in range(10)}  # 256 B each
    tensors["big"] = np.arange(400, dtype=np.float32)  # 1600 B > max: a shard of its own
    tensors["bf"] = np.ones((8,), ml_dtypes.bfloat16)
    files = save_safetensors(tensors, tmp_path, max_shard_bytes=600)
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, 8)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"] == {"total_size": sum(t.nbytes for t in tensors.values())}
    assert list(index["weight_map"]) == sorted(tensors)
    assert set(index["weight_map"].values()) == set(files)
    assert sorted(os.listdir(tmp_path)) == sorted([*files, "model.safetensors.index.json"])
    for name, fname in index["weight_map"].items():  # as transformers reads it
        with safe_open(str(tmp_path / fname), framework="pt") as f:
            assert name in f.keys()
            assert f.metadata() == {"format": "pt"}
            got = _to_numpy(f.get_tensor(name))
            np.testing.assert_array_equal(_bits(got), _bits(tensors[name]))
    with SafetensorsCheckpoint.open(tmp_path) as ckpt:
        assert ckpt.keys() == sorted(tensors)
        assert sorted(ckpt.files) == sorted(str(tmp_path / f) for f in files)
        for name, want in tensors.items():
            np.testing.assert_array_equal(_bits(ckpt.get(name)), _bits(want))


def test_everything_fitting_one_shard_is_unsharded(tmp_path):
    files = save_safetensors({"a": np.zeros(4, np.float32)}, tmp_path, max_shard_bytes=16)
    assert files == ["model.safetensors"]
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_stale_files_of_earlier_saves_are_removed(tmp_path):
    tensors = {f"t{i}": np.full((64,), i, np.float32) for i in range(6)}
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-extra.safetensors").write_bytes(b"not ours")
    save_safetensors(tensors, tmp_path, max_shard_bytes=600)
    assert len([n for n in os.listdir(tmp_path) if n.startswith("model-0")]) == 3
    save_safetensors(tensors, tmp_path)  # unsharded: old shards and index go
    assert sorted(os.listdir(tmp_path)) == [
        "config.json",
        "model-extra.safetensors",
        "model.safetensors",
    ]
    files = save_safetensors(tensors, tmp_path, max_shard_bytes=1100)  # sharded again
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["config.json", "model-extra.safetensors", "model.safetensors.index.json", *files]
    )
    with SafetensorsCheckpoint.open(tmp_path) as ckpt:
        assert ckpt.keys() == sorted(tensors)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    save_safetensors({"a": np.ones(3, np.float32)}, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    class Exploding:
        shape = (2,)
        dtype = np.dtype(np.float32)

        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        save_safetensors({"a": np.zeros(3, np.float32), "b": Exploding()}, tmp_path)
    assert os.listdir(tmp_path) == ["model.safetensors"]  # temp file removed
    assert (tmp_path / "model.safetensors").read_bytes() == before

    with pytest.raises(SafetensorsError, match=r"'c'.*complex64"):
        save_safetensors({"c": np.zeros(2, np.complex64)}, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before


# ------------------------------------------------------------------------------ directories
def test_directory_without_index_reads_all_files(tmp_path):
    save_safetensors({"a": np.ones(2, np.float32)}, tmp_path, filename_prefix="one")
    save_safetensors({"b": np.ones(3, np.int64)}, tmp_path, filename_prefix="two")
    with SafetensorsCheckpoint.open(tmp_path) as ckpt:
        assert ckpt.keys() == ["a", "b"]
        assert [os.path.basename(f) for f in ckpt.files] == ["one.safetensors", "two.safetensors"]
    # model.safetensors, when present, is used alone
    save_safetensors({"m": np.ones(1, np.float32)}, tmp_path)
    assert SafetensorsCheckpoint.open(tmp_path).keys() == ["m"]


def test_duplicate_names_across_files_name_both(tmp_path):
    save_safetensors({"w": np.ones(2, np.float32)}, tmp_path, filename_prefix="p1")
    save_safetensors({"w": np.ones(2, np.float32)}, tmp_path, filename_prefix="p2")
    with pytest.raises(SafetensorsError, match=r"'w'.*p1\.safetensors.*p2\.safetensors"):
        SafetensorsCheckpoint.open(tmp_path)


# ------------------------------------------------------------------------------ errors
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
            r"\(73 bytes; truncated or corrupt\?\).*not fully covered",
        ),
        (
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            r"invalid shape, data type, or offset for tensor",
        ),
        (
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
            b"\0" * 8,
            r"invalid offset for tensor `w`",
        ),
        (
            {"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            r"invalid value: integer `-2`",
        ),
        (
            {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}},
            b"\0",
            r"unknown variant `Q7`",
        ),
        ({"w": [1, 2]}, b"", r"invalid type: integer `1`"),
        ({"__metadata__": {"a": 1}}, b"", r"invalid type: integer `1`, expected a string"),
    ],
)
def test_corrupt_files_are_named_with_the_reason(tmp_path, header, data, match):
    path = _raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=match) as err:
        SafetensorsCheckpoint.open(path)
    assert str(path) in str(err.value)


def test_missing_truncated_and_non_json_files(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(SafetensorsError, match=r"nope\.safetensors.*not found"):
        SafetensorsCheckpoint.open(missing)
    with pytest.raises(SafetensorsError, match=r"no model\.safetensors\.index\.json"):
        SafetensorsCheckpoint.open(tmp_path)  # an empty directory

    short = tmp_path / "s.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(
        SafetensorsError, match=r"s\.safetensors: not a readable.*2 bytes.*header too small"
    ):
        SafetensorsCheckpoint.open(short)
    long_header = tmp_path / "t.safetensors"
    long_header.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(
        SafetensorsError, match=r"t\.safetensors: not a readable.*invalid header length"
    ):
        SafetensorsCheckpoint.open(long_header)
    bad_json = tmp_path / "j.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(SafetensorsError, match=r"j\.safetensors: not a readable.*invalid JSON"):
        SafetensorsCheckpoint.open(bad_json)
    # a complete file cut short in its data
    good = tmp_path / "good"
    save_safetensors({"w": np.ones(16, np.float32)}, good)
    raw = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(raw[:-5])
    with pytest.raises(
        SafetensorsError,
        match=r"model\.safetensors: not a readable.*truncated or corrupt.*not fully covered",
    ):
        SafetensorsCheckpoint.open(good)


def _sharded(tmp_path):
    d = tmp_path / "sharded"
    save_safetensors(
        {"a": np.zeros(64, np.float32), "b": np.ones(64, np.float32)}, d, max_shard_bytes=300
    )
    return d


def test_index_naming_a_missing_shard(tmp_path):
    d = _sharded(tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SafetensorsError) as err:
        SafetensorsCheckpoint.open(d)
    msg = str(err.value)
    assert "model.safetensors.index.json" in msg
    assert str(d / "model-00002-of-00002.safetensors") in msg and "'b'" in msg


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    d = _sharded(tmp_path)
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["c"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(SafetensorsError) as err:
        SafetensorsCheckpoint.open(d)
    msg = str(err.value)
    assert str(d / "model-00001-of-00002.safetensors") in msg and "'c'" in msg
    assert "model.safetensors.index.json" in msg

    index_path.write_text("{not json")
    with pytest.raises(SafetensorsError, match=r"index\.json: not valid JSON"):
        SafetensorsCheckpoint.open(d)


def test_unknown_tensor_lists_close_names(tmp_path):
    names = ["model.norm.weight", "model.norm.bias", "lm_head.weight"]
    save_safetensors({n: np.ones(4, np.float32) for n in names}, tmp_path)
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    assert "model.norm.weight" in ckpt and "model.norm.weight2" not in ckpt
    for call in (ckpt.get, ckpt.shape, ckpt.dtype):
        with pytest.raises(TensorNotFoundError) as err:
            call("model.norm.weight2")
        assert isinstance(err.value, KeyError) and isinstance(err.value, SafetensorsError)
        msg = str(err.value)
        assert "'model.norm.weight2'" in msg and "'model.norm.weight'" in msg
        assert str(tmp_path) in msg


# ------------------------------------------------------------------------------ dtypes
def test_dtype_names():
    for name in ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]:
        assert dtype_to_str(str_to_dtype(name)) == name
    assert str_to_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert dtype_to_str(np.dtype(">f4")) == "F32"
    assert dtype_to_str(np.float16) == "F16"
    with pytest.raises(SafetensorsError, match="Q7"):
        str_to_dtype("Q7")
    with pytest.raises(SafetensorsError, match="complex128"):
        dtype_to_str(np.complex128)

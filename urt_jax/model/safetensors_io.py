"""Reading and writing Hugging Face safetensors checkpoints as numpy arrays (bf16 included).

Written from the format spec: an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``, then the raw row-major
little-endian data. Reading memory-maps the files, so a tensor is only paged in when used and a
sharded 7B checkpoint can be placed onto a mesh tensor by tensor.
"""

from __future__ import annotations

import difflib
import json
import mmap
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file or index that cannot be read as written."""


def str_to_dtype(name: str) -> np.dtype:
    if name not in _DTYPES:
        raise SafetensorsError(f"unknown safetensors dtype {name!r}; known: {sorted(_DTYPES)}")
    return _DTYPES[name]


def dtype_to_str(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    key = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if key not in _NAMES:
        raise SafetensorsError(f"dtype {dtype} cannot be stored in safetensors")
    return _NAMES[key]


class _File:
    """One memory-mapped safetensors file."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise SafetensorsError(f"{path}: file not found")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path}: truncated file ({size} bytes, no header length)")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise SafetensorsError(
                    f"{path}: header length {n} runs past the end of the "
                    f"file ({size} bytes); the file is truncated"
                )
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype = str_to_dtype(info["dtype"])
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except SafetensorsError as e:
                raise SafetensorsError(f"{path}: tensor {name!r}: {e}") from None
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(
                    f"{path}: tensor {name!r}: malformed header entry {info!r}"
                ) from None
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != nbytes:
                raise SafetensorsError(
                    f"{path}: tensor {name!r}: data_offsets {[begin, end]} "
                    f"span {end - begin} bytes, expected {nbytes} for shape "
                    f"{shape} and dtype {info['dtype']}"
                )
            if begin < 0 or end > data_len:
                raise SafetensorsError(
                    f"{path}: tensor {name!r}: data_offsets {[begin, end]} "
                    f"outside the data area of {data_len} bytes"
                )
            self.entries[name] = (dtype, shape, begin, end)
        self._fh = open(path, "rb")
        self._mmap = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None

    def get(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        if begin == end:
            return np.zeros(shape, dtype)
        buf = np.frombuffer(
            self._mmap, dtype=np.uint8, count=end - begin, offset=self.data_start + begin
        )
        return buf.view(dtype).reshape(shape)

    def close(self) -> None:
        # Arrays handed out keep the mmap alive through their buffer; closing the file handle is
        # safe, and the mapping is released when the last array is gone.
        self._fh.close()


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory (single file, sharded with an index, or a set)."""

    def __init__(self, files: list[_File], where: dict[str, _File]):
        self._files = files
        self._where = where

    @classmethod
    def open(cls, path: str | os.PathLike) -> SafetensorsCheckpoint:
        path = os.fspath(path)
        if os.path.isfile(path):
            f = _File(path)
            return cls([f], dict.fromkeys(f.entries, f))
        if not os.path.isdir(path):
            raise SafetensorsError(f"{path}: no such file or directory")
        index = os.path.join(path, INDEX_FILE)
        if os.path.isfile(index):
            return cls._open_index(path, index)
        single = os.path.join(path, SINGLE_FILE)
        names = (
            [single]
            if os.path.isfile(single)
            else sorted(
                os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors")
            )
        )
        if not names:
            raise SafetensorsError(f"{path}: no *.safetensors files (and no {INDEX_FILE})")
        files = [_File(n) for n in names]
        where: dict[str, _File] = {}
        for f in files:
            for name in f.entries:
                if name in where:
                    raise SafetensorsError(
                        f"tensor {name!r} is in both {where[name].path} and {f.path}"
                    )
                where[name] = f
        return cls(files, where)

    @classmethod
    def _open_index(cls, root: str, index: str) -> SafetensorsCheckpoint:
        try:
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SafetensorsError(f"{index}: not a valid index ({e!r})") from None
        files: dict[str, _File] = {}
        where: dict[str, _File] = {}
        for name, shard in weight_map.items():
            if shard not in files:
                shard_path = os.path.join(root, shard)
                if not os.path.isfile(shard_path):
                    raise SafetensorsError(
                        f"{index}: shard {shard!r} (holding {name!r}) is "
                        f"missing: {shard_path} not found"
                    )
                files[shard] = _File(shard_path)
            if name not in files[shard].entries:
                raise SafetensorsError(
                    f"{index}: tensor {name!r} is mapped to {shard!r}, which does not contain it"
                )
            where[name] = files[shard]
        return cls(list(files.values()), where)

    # -------------------------------------------------------------- queries
    @property
    def files(self) -> list[str]:
        return [f.path for f in self._files]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._files[0].metadata) if self._files else {}

    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def _entry(self, name: str):
        if name not in self._where:
            close = difflib.get_close_matches(name, list(self._where), n=3)
            hint = f"; close names: {close}" if close else ""
            raise KeyError(f"tensor {name!r} not found in {self.files}{hint}")
        f = self._where[name]
        return f, f.entries[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entry(name)[1][0]

    def get(self, name: str) -> np.ndarray:
        """A read-only, memory-mapped view of the tensor."""
        f, _ = self._entry(name)
        return f.get(name)

    def close(self) -> None:
        for f in self._files:
            f.close()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------- writing
def _header(
    tensors: Mapping[str, np.ndarray], names: list[str], metadata: Mapping[str, str]
) -> tuple[bytes, list[np.ndarray]]:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    arrays, offset = [], 0
    for name in names:
        a = np.asarray(tensors[name])
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array 1-d)
            a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        nbytes = a.nbytes
        header[name] = {
            "dtype": dtype_to_str(a.dtype),
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        arrays.append(a)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned
    return raw, arrays


def _write_file(
    path: str, tensors: Mapping[str, np.ndarray], names: list[str], metadata: Mapping[str, str]
) -> None:
    raw, arrays = _header(tensors, names, metadata)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.reshape(-1).view(np.uint8).data if a.size else b"")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_safetensors(
    tensors: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    *,
    max_shard_bytes: int | None = None,
    metadata: Mapping[str, str] | None = None,
    filename_prefix: str = "model",
) -> list[str]:
    """Writes ``model.safetensors`` or shards + ``model.safetensors.index.json``, atomically.

    Stale checkpoint files of an earlier save in out_dir are removed after the new ones exist.
    Returns the names of the written weight files.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    metadata = {"format": "pt"} if metadata is None else dict(metadata)
    names = sorted(tensors)
    sizes = {n: np.asarray(tensors[n]).nbytes for n in names}
    total = sum(sizes.values())
    shards: list[list[str]] = [[]]
    if max_shard_bytes is not None and total > max_shard_bytes:
        used = 0
        for n in names:
            if shards[-1] and used + sizes[n] > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(n)
            used += sizes[n]
    else:
        shards[0] = names
    index_path = os.path.join(out_dir, f"{filename_prefix}.safetensors.index.json")
    if len(shards) == 1:
        files = [f"{filename_prefix}.safetensors"]
    else:
        files = [
            f"{filename_prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            for i in range(len(shards))
        ]
    for fname, shard in zip(files, shards, strict=True):
        _write_file(os.path.join(out_dir, fname), tensors, shard, metadata)
    if len(shards) > 1:
        weight_map = {n: f for f, shard in zip(files, shards, strict=True) for n in shard}
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        tmp = f"{index_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(index, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, index_path)
    # remove files of an earlier save that are not part of this one
    keep = set(files) | ({os.path.basename(index_path)} if len(shards) > 1 else set())
    for name in os.listdir(out_dir):
        stale = name.startswith(filename_prefix) and (
            name.endswith(".safetensors") or name == os.path.basename(index_path)
        )
        if stale and name not in keep:
            os.remove(os.path.join(out_dir, name))
    return files

"""Hugging Face safetensors checkpoints as numpy arrays (bf16 included): read and written.

Reading goes through the safetensors library (``safe_open``): each file is memory-mapped and a
tensor, or a slice of one, is read only when asked for, so a sharded 7B checkpoint is placed onto
a device mesh shard by shard. Errors name the file and, where known, the tensor.

Writing is here because the library has no writer that streams: its ``save_file`` takes every
tensor in memory at once and writes one file. ``save_safetensors`` converts one tensor at a time
(jax arrays included) into transformers' sharded layout, from the format description: an 8-byte
little-endian u64 header length ``N``, ``N`` bytes of UTF-8 JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}`` (offsets from the first byte after the
header), then the raw row-major little-endian data.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes  # registers bfloat16 with numpy, which the library's numpy reader needs
import numpy as np
from safetensors import SafetensorError, safe_open

from urt_jax.atomic import replace_with, write_text

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "SafetensorsCheckpoint",
    "SafetensorsError",
    "TensorNotFoundError",
    "dtype_to_str",
    "save_safetensors",
    "str_to_dtype",
]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES: dict[np.dtype, str] = {v: k for k, v in _DTYPES.items()}
_HEADER_ALIGN = 8


class SafetensorsError(ValueError):
    """A safetensors file, shard index or tensor that cannot be read or written as asked."""


class TensorNotFoundError(SafetensorsError, KeyError):
    """A tensor name that the checkpoint does not hold (also a KeyError)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------- dtypes
def str_to_dtype(name: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype string ("F32", "BF16", ...)."""
    try:
        return _DTYPES[name]
    except (KeyError, TypeError):
        raise SafetensorsError(
            f"unknown safetensors dtype {name!r}; expected one of {sorted(_DTYPES)}"
        ) from None


def dtype_to_str(dtype: np.dtype | type | str) -> str:
    """The safetensors dtype string of a numpy dtype (any byte order)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise SafetensorsError(f"{dtype!r} is not a numpy dtype") from None
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    name = _NAMES.get(dt)
    if name is None:
        raise SafetensorsError(
            f"dtype {dt} cannot be stored in safetensors; supported: "
            f"{sorted(str(d) for d in _NAMES)}"
        )
    return name


# ---------------------------------------------------------------------------------- reading
_LIBRARY_READS = set(_DTYPES) - {"F8_E4M3", "F8_E5M2"}  # the numpy reader has no float8


class _Shard:
    """One safetensors file, opened by the safetensors library (memory-mapped, lazy)."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise SafetensorsError(f"{path}: file not found")
        try:
            self._file = safe_open(path, framework="numpy")
            self.names = set(self._file.keys())
            self.metadata = self._file.metadata() or {}
        except SafetensorError as e:
            size = os.path.getsize(path)
            raise SafetensorsError(
                f"{path}: not a readable safetensors file ({size} bytes; truncated or corrupt?): "
                f"{e}"
            ) from None
        except OSError as e:
            raise SafetensorsError(f"{path}: cannot open ({e.strerror or e})") from None
        self._closed = False

    def _slice(self, name: str):
        if self._closed:
            raise SafetensorsError(f"{self.path}: checkpoint is closed (reading {name!r})")
        return self._file.get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> np.dtype:
        dtype = self._slice(name).get_dtype()
        if dtype not in _LIBRARY_READS:
            raise SafetensorsError(
                f"{self.path}: tensor {name!r} is {dtype}, which is not read here; supported: "
                f"{sorted(_LIBRARY_READS)} (convert a quantized checkpoint to bf16 first)"
            )
        return str_to_dtype(dtype)

    def read(self, name: str, index: tuple[slice, ...] | None) -> np.ndarray:
        self.dtype(name)  # an unsupported dtype is named before the library fails on it
        try:
            if index is None:
                return self._file.get_tensor(name)
            return self._slice(name)[index]
        except SafetensorError as e:
            raise SafetensorsError(f"{self.path}: tensor {name!r}: {e}") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.__exit__(None, None, None)


class SafetensorsCheckpoint:
    """The tensors of one safetensors file or of a checkpoint directory.

    A directory is read through ``model.safetensors.index.json`` when present, else
    ``model.safetensors``, else all its ``*.safetensors`` files together.
    """

    def __init__(self, source: str, shards: list[_Shard], where: dict[str, _Shard]):
        self._source = source
        self._shards = shards
        self._where = where
        self._keys = sorted(where)

    # -------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SafetensorsCheckpoint:
        """Opens a ``.safetensors`` file or a checkpoint directory (see the class docstring)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_FILE)
            if os.path.isfile(index):
                return cls._open_index(path, index)
            single = os.path.join(path, SINGLE_FILE)
            if os.path.isfile(single):
                paths = [single]
            else:
                paths = sorted(
                    os.path.join(path, n)
                    for n in os.listdir(path)
                    if n.endswith(".safetensors") and os.path.isfile(os.path.join(path, n))
                )
                if not paths:
                    raise SafetensorsError(
                        f"{path}: no {INDEX_FILE}, {SINGLE_FILE} or other *.safetensors file"
                    )
        elif os.path.exists(path):
            paths = [path]
        else:
            raise SafetensorsError(f"{path}: file not found")

        shards: list[_Shard] = []
        try:
            where: dict[str, _Shard] = {}
            for p in paths:
                shard = _Shard(p)
                shards.append(shard)
                for name in sorted(shard.names):
                    if name in where:
                        raise SafetensorsError(
                            f"tensor {name!r} is stored twice: in {where[name].path} and in "
                            f"{shard.path}"
                        )
                    where[name] = shard
        except BaseException:
            for s in shards:
                s.close()
            raise
        return cls(path, shards, where)

    @classmethod
    def _open_index(cls, root: str, index: str) -> SafetensorsCheckpoint:
        try:
            with open(index, encoding="utf-8") as fh:
                data = json.load(fh)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{index}: not valid JSON ({e})") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise SafetensorsError(
                f'{index}: expected an object with a "weight_map" of tensor name -> shard file'
            )
        opened: dict[str, _Shard] = {}
        try:
            for shard_name in sorted(set(weight_map.values())):
                shard_path = os.path.join(root, shard_name)
                if not os.path.isfile(shard_path):
                    example = next(k for k, v in weight_map.items() if v == shard_name)
                    raise SafetensorsError(
                        f"{index}: shard {shard_name!r} (holding e.g. {example!r}) is missing: "
                        f"{shard_path} not found"
                    )
                opened[shard_name] = _Shard(shard_path)
            where: dict[str, _Shard] = {}
            for name, shard_name in weight_map.items():
                shard = opened[shard_name]
                if name not in shard.names:
                    raise SafetensorsError(
                        f"{shard.path}: tensor {name!r} is not in this file, but {index} maps "
                        f"it here (the file holds {len(shard.names)} tensors)"
                    )
                where[name] = shard
        except BaseException:
            for s in opened.values():
                s.close()
            raise
        return cls(root, list(opened.values()), where)

    # -------------------------------------------------------------------- queries
    @property
    def files(self) -> list[str]:
        """Paths of the safetensors files read."""
        return [s.path for s in self._shards]

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the first file (``{}`` when it has none)."""
        return dict(self._shards[0].metadata) if self._shards else {}

    def keys(self) -> list[str]:
        """All tensor names, sorted."""
        return list(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def _shard(self, name: str) -> _Shard:
        shard = self._where.get(name)
        if shard is None:
            close = difflib.get_close_matches(str(name), self._keys, n=5, cutoff=0.5)
            hint = f"close names: {close}" if close else f"first names: {self._keys[:5]}"
            raise TensorNotFoundError(
                f"{self._source}: tensor {name!r} not found among {len(self._keys)} tensors; {hint}"
            )
        return shard

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, without reading it."""
        return self._shard(name).shape(name)

    def dtype(self, name: str) -> np.dtype:
        """The tensor's numpy dtype (bf16 is ``ml_dtypes.bfloat16``), without reading it."""
        return self._shard(name).dtype(name)

    def get(self, name: str) -> np.ndarray:
        """The whole tensor, read into its own array (valid after close)."""
        return self._shard(name).read(name, None)

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """``tensor[index]`` (one slice per leading axis), reading only those bytes of the file."""
        return self._shard(name).read(name, index)

    def close(self) -> None:
        """Releases the files; arrays already returned stay valid."""
        for s in self._shards:
            s.close()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({self._source!r}, {len(self._keys)} tensors)"


# ---------------------------------------------------------------------------------- writing
class _Spec:
    __slots__ = ("name", "value", "dtype", "shape", "nbytes")

    def __init__(self, name: str, value: Any):
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            value = np.asarray(value)
        try:
            dtype = np.dtype(value.dtype)
        except TypeError:
            raise SafetensorsError(
                f"tensor {name!r}: dtype {value.dtype} is not a numpy dtype"
            ) from None
        try:
            dtype_to_str(dtype)
        except SafetensorsError as e:
            raise SafetensorsError(f"tensor {name!r}: {e}") from None
        self.name, self.value = name, value
        self.dtype = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
        self.shape = tuple(int(s) for s in value.shape)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize

    def host_array(self) -> np.ndarray:
        a = np.asarray(self.value)
        if a.shape != self.shape:
            raise SafetensorsError(
                f"tensor {self.name!r}: converted to shape {a.shape}, expected {self.shape}"
            )
        if a.dtype != self.dtype:
            a = a.astype(self.dtype)  # big-endian input -> little-endian
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
        return a


def _header_bytes(specs: list[_Spec], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for s in specs:
        header[s.name] = {
            "dtype": dtype_to_str(s.dtype),
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-(8 + len(raw)) % _HEADER_ALIGN)  # data starts 8-byte aligned


def _write_shard(path: str, specs: list[_Spec], metadata: Mapping[str, str]) -> None:
    header = _header_bytes(specs, metadata)

    def write(fh) -> None:
        fh.write(struct.pack("<Q", len(header)))
        fh.write(header)
        for s in specs:
            if s.nbytes:
                a = s.host_array()  # one tensor on the host at a time
                fh.write(memoryview(a.reshape(-1).view(np.uint8)))
                del a

    replace_with(path, write, binary=True)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_safetensors(
    tensors: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_bytes: int | None = None,
    metadata: Mapping[str, str] | None = None,
    filename_prefix: str = "model",
) -> list[str]:
    """Writes ``tensors`` (numpy, jax or anything ``np.asarray`` takes) to ``out_dir``.

    One ``{prefix}.safetensors`` when ``max_shard_bytes`` is None or everything fits one shard,
    else ``{prefix}-00001-of-0000N.safetensors`` ... plus ``{prefix}.safetensors.index.json``
    (``{"metadata": {"total_size": ...}, "weight_map": {name: file}}``) as transformers writes
    them. Each value is read once (``np.asarray``), in sorted name order, and written before
    the next is read. A tensor larger than ``max_shard_bytes`` gets a shard
    of its own. ``metadata`` defaults to ``{"format": "pt"}``. Every file is written atomically
    (temp file, fsync, rename); weight and index files of an earlier save with this prefix that
    are not part of this one are removed once the new files are in place.

    Returns the names of the weight files written (not the index), in order.
    """
    out_dir = os.fspath(out_dir)
    if max_shard_bytes is not None and (
        not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0
    ):
        raise SafetensorsError(f"max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
    metadata = {"format": "pt"} if metadata is None else dict(metadata)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"metadata must map strings to strings, got {metadata!r}")
    bad = [k for k in tensors if not isinstance(k, str)]
    if bad:
        raise SafetensorsError(f"tensor names must be strings, got {bad[:5]!r}")
    specs = [_Spec(name, tensors[name]) for name in sorted(tensors)]

    total = sum(s.nbytes for s in specs)
    shards: list[list[_Spec]] = [[]]
    if max_shard_bytes is not None and total > max_shard_bytes:
        used = 0
        for s in specs:
            if shards[-1] and used + s.nbytes > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(s)
            used += s.nbytes
    else:
        shards[0] = specs
    if len(shards) == 1:
        files = [f"{filename_prefix}.safetensors"]
    else:
        files = [
            f"{filename_prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            for i in range(len(shards))
        ]
    index_name = f"{filename_prefix}.safetensors.index.json"

    os.makedirs(out_dir, exist_ok=True)
    for fname, shard in zip(files, shards, strict=True):
        _write_shard(os.path.join(out_dir, fname), shard, metadata)
    written = set(files)
    if len(shards) > 1:
        weight_map = {s.name: f for f, shard in zip(files, shards, strict=True) for s in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        write_text(os.path.join(out_dir, index_name), text)
        written.add(index_name)
    _fsync_dir(out_dir)

    # Files an earlier save with this prefix could have written, that this one did not.
    ours = re.compile(rf"{re.escape(filename_prefix)}(-\d{{5,}}-of-\d{{5,}})?\.safetensors")
    for name in os.listdir(out_dir):
        if name not in written and (ours.fullmatch(name) or name == index_name):
            os.remove(os.path.join(out_dir, name))
    return files

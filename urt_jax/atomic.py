"""Files written whole or not at all: a temporary file beside the target, fsynced, then renamed
onto it. An error leaves the target as it was and removes the temporary file; concurrent writers
of the same target never share a temporary file."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from typing import IO, Any


def replace_with(path: str, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renames it onto ``path``; the
    directory is created if missing."""
    directory, base = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text(path: str, text: str) -> None:
    """``text`` as a UTF-8 file, written whole or not at all."""
    replace_with(path, lambda f: f.write(text))


def cut_back_jsonl(path: str, last_step: int) -> int:
    """A JSONL log of ``{"step": ...}`` rows (metrics, completions) as it stood after step
    ``last_step``: rows of later steps (written before an interruption) and a torn last line (a
    kill mid-write) are dropped, so that a resumed run never holds a step twice. Rewritten whole
    or not at all; returns the rows kept. A torn line anywhere but the end is an error naming
    the file and the line."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    kept: list[bytes] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            if number == len(lines):  # the last line, no newline after it: cut mid-write
                break
            raise ValueError(f"{path}:{number}: not a JSON line: {raw[:80]!r}") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{number}: a row without an integer 'step'")
        if row["step"] <= last_step:
            kept.append(raw + b"\n")
    if len(kept) != sum(1 for raw in lines if raw.strip()):
        replace_with(path, lambda f: f.writelines(kept), binary=True)
    return len(kept)

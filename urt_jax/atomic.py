"""Files written whole or not at all: a temporary file beside the target, fsynced, then renamed
onto it. An error leaves the target as it was and removes the temporary file; concurrent writers
of the same target never share a temporary file."""

from __future__ import annotations

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

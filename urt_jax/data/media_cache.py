"""The media files a pre-flight check already found usable, remembered across runs.

Training, eval and score open every media file of a data file before they start
(``media.check_all_media``), decoding each image whole, since a truncated file shows only then.
On a large dataset that costs minutes, again at every resume. A file that passed is remembered
here by its real path, inode, size, modification time (ns) and the pixel limit it passed under,
in a JSON-lines file; a file changed since in any of these is checked again. Only passes are
remembered: a bad file is reported every time.

The file is ``$URT_JAX_CACHE_DIR/checked_media.jsonl`` (default ``~/.cache/urt_jax``). It is an
optimisation only: a directory that cannot be written costs a warning, never a run, and a torn
or foreign line is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from urt_jax.data.records import Media

log = logging.getLogger(__name__)

CACHE_ENV = "URT_JAX_CACHE_DIR"
FILE_NAME = "checked_media.jsonl"

Key = tuple[str, int, int, int, int]  # (real path, inode, size, mtime ns, pixel limit)


def default_cache_path() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "urt_jax")
    return os.path.join(root, FILE_NAME)


class CheckedMedia:
    """The passes recorded in ``path`` (``default_cache_path()`` when None); thread-safe."""

    def __init__(self, path: str | None = None):
        self.path = path or default_cache_path()
        self._known: set[Key] = set()
        self._new: list[Key] = []
        self._lock = threading.Lock()
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        path, inode, size, mtime, limit = json.loads(line)
                        self._known.add((str(path), int(inode), int(size), int(mtime), int(limit)))
                    except (ValueError, TypeError):
                        continue  # a line torn by a killed run, or not ours
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as e:
            log.warning("%s: not read (%s); every media file is checked", self.path, e)

    @staticmethod
    def key(media: Media, max_pixels: int) -> Key | None:
        """The key of a medium stored as one file; None for bytes, frame lists or a file that
        cannot be stat'ed (the check itself then says why)."""
        if media.path is None:
            return None
        try:
            st = os.stat(media.path)
        except OSError:
            return None
        real = os.path.realpath(media.path)
        return (real, st.st_ino, st.st_size, st.st_mtime_ns, int(max_pixels))

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._known

    def add(self, key: Key) -> None:
        with self._lock:
            if key not in self._known:
                self._known.add(key)
                self._new.append(key)

    def save(self) -> None:
        """Appends the passes recorded since the last save."""
        with self._lock:
            new, self._new = self._new, []
        if not new:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            text = "".join(json.dumps(list(k)) + "\n" for k in new)
            with open(self.path, "a+b") as fh:
                end = fh.seek(0, os.SEEK_END)
                if end:
                    fh.seek(end - 1)
                    if fh.read(1) != b"\n":  # a line torn by a killed run: end it first
                        text = "\n" + text
                fh.write(text.encode("utf-8"))
        except OSError as e:
            log.warning("%s: cannot record checked media files (%s)", self.path, e)

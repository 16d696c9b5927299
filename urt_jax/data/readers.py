"""Readers for the three data formats, each record tagged with its file and line.

- released SFT (LLaVA style): ``{"conversations": [{"from": "human", "value": ...},
  {"from": "gpt", "value": "<think>...</think>\\n<answer>...</answer>"}], "images": [...]}``
- released GRPO: ``{"problem": <full prompt>, "solution": "Image 1 is better", "images": [...]}``
- native: ``{"id", "task", "mode", "prompt", "images" | "videos", "answers", "verdict",
  "reply"?}`` where a video is a file path or a list of frame paths (with optional "fps").

Files are JSONL (one object per line) or a JSON array. Media paths are resolved under a data root
and may not escape it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from urt_jax.atomic import replace_with
from urt_jax.data.records import Media, PreferenceRecord, RecordError, task_from_verdict
from urt_jax.rewards import extract_answer

_MEDIA_MARK = re.compile(r"<image>\n?|<video>\n?")


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """``rows`` as a JSONL file, written whole or not at all (a temporary file, then a rename);
    the directory is created if missing."""

    def write(f):
        for row in rows:
            f.write(json.dumps(row) + "\n")

    replace_with(path, write)


def iter_json_objects(path: str) -> Iterator[tuple[int, Any | Exception]]:
    """(line number, object or the JSON error) for a JSONL file or a JSON array file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if path.endswith(".json") and stripped.startswith("["):
        yield from _iter_array(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            yield number, RecordError(f"malformed JSON: {e.msg} (column {e.colno})")


def _iter_array(text: str) -> Iterator[tuple[int, Any | Exception]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield line, RecordError(f"malformed JSON: {e.msg}")
            return
        yield line, obj


class MediaResolver:
    """Resolves media paths under a data root; refuses paths that escape it."""

    def __init__(self, data_root: str):
        self.root = os.path.realpath(data_root)

    def __call__(self, rel: str, where: str) -> str:
        if not isinstance(rel, str) or not rel:
            raise RecordError(f"{where}: media path must be a non-empty string, found {rel!r}")
        full = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([full, self.root]) != self.root:
            raise RecordError(f"{where}: media path {rel!r} escapes the data root {self.root}")
        return full


def _require(obj: dict, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj:
        raise RecordError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise RecordError(f"{where}: field {key!r} must be {kind}, found {type(value).__name__}")
    return value


def _media(obj: dict, resolve: MediaResolver, where: str) -> tuple[Media, ...]:
    out = []
    images = obj.get("images", [])
    if "image" in obj:  # LLaVA-style single image
        images = [obj["image"], *images]
    if not isinstance(images, list):
        raise RecordError(f"{where}: field 'images' must be a list")
    out += [Media("image", path=resolve(p, where)) for p in images]
    videos = obj.get("videos", [])
    if "video" in obj:
        videos = [obj["video"], *videos]
    if not isinstance(videos, list):
        raise RecordError(f"{where}: field 'videos' must be a list")
    fps = obj.get("fps")
    for v in videos:
        if isinstance(v, list):
            out.append(
                Media(
                    "video",
                    frames=tuple(resolve(p, where) for p in v),
                    fps=float(fps) if fps else None,
                )
            )
        else:
            out.append(Media("video", path=resolve(v, where)))
    return tuple(out)


def parse_record(
    obj: Any, resolve: MediaResolver, where: str, index: int, labelled: bool = True
) -> PreferenceRecord:
    """One record. ``labelled=False`` (items to be judged) lets native items leave out the
    verdict; the record then carries ``verdict=""``."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    media = _media(obj, resolve, where)
    has_video = any(m.kind == "video" for m in media)
    rid = str(obj.get("id", index))
    if "conversations" in obj:  # released SFT format
        turns = _require(obj, "conversations", where, list)
        human = [t for t in turns if isinstance(t, dict) and t.get("from") == "human"]
        gpt = [t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
        if len(human) != 1 or len(gpt) != 1:
            raise RecordError(f"{where}: conversations must hold one 'human' and one 'gpt' turn")
        reply = _require(gpt[0], "value", where)
        verdict = extract_answer(reply)
        task, mode = _task(verdict, has_video, where)
        text = _MEDIA_MARK.sub("", _require(human[0], "value", where)).strip()
        record = PreferenceRecord(
            rid, task, mode, verdict, media, user_text=text, reply=reply, source=where
        )
    elif "problem" in obj:  # released GRPO format
        verdict = _require(obj, "solution", where)
        task, mode = _task(verdict, has_video, where)
        text = _MEDIA_MARK.sub("", _require(obj, "problem", where)).strip()
        record = PreferenceRecord(rid, task, mode, verdict, media, user_text=text, source=where)
    else:  # native
        answers = obj.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise RecordError(f"{where}: field 'answers' must be a list of strings")
        reply = obj.get("reply")
        if reply is not None and not isinstance(reply, str):
            raise RecordError(f"{where}: field 'reply' must be a string")
        record = PreferenceRecord(
            rid,
            _require(obj, "task", where),
            obj.get("mode", "pairwise"),
            _require(obj, "verdict", where) if labelled or "verdict" in obj else "",
            media,
            prompt=_require(obj, "prompt", where),
            answers=tuple(answers),
            reply=reply,
            source=where,
        )
    return record.validate()


def _task(verdict: str, has_video: bool, where: str) -> tuple[str, str]:
    try:
        return task_from_verdict(verdict, has_video)
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from None


def read_records(
    path: str | os.PathLike, data_root: str | None = None, labelled: bool = True
) -> Iterator[PreferenceRecord | RecordError]:
    """Every record of a data file, or a RecordError naming its line where it is bad."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: data file not found")
    resolve = MediaResolver(data_root if data_root is not None else os.path.dirname(path))
    for index, (line, obj) in enumerate(iter_json_objects(path)):
        where = f"{path}:{line}"
        if isinstance(obj, Exception):
            yield RecordError(f"{where}: {obj}")
            continue
        try:
            yield parse_record(obj, resolve, where, index, labelled)
        except RecordError as e:
            yield e

"""Readers for the data formats, each record tagged with its file and line.

- SFT, LLaVA style: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt",
  "value": "<think>...</think>\\n<answer>...</answer>"}], "images": [...]}``; an optional
  ``{"from": "system"}`` first turn or top-level ``"system"`` string.
- SFT, LLaMA-Factory style: the same with ``"messages": [{"role": "user", "content": ...},
  {"role": "assistant", "content": ...}]`` (roles system/user/assistant).
- GRPO: ``{"problem": <full prompt>, "solution": "Image 1 is better", "images": [...]}`` (or a
  single ``"image"`` / ``"video"``).
- native: ``{"id", "task", "mode", "prompt", "images" | "videos", "answers", "verdict",
  "reply"?, "system"?}`` where a video is a file path or a list of frame paths (optional "fps").
- a dataset YAML (``datasets: [{json_path, image_folder, sampling_strategy}]``) listing files of
  the formats above, each with its own media folder.

SFT and GRPO records are single-turn: one user text, one reply (SFT). ``<image>``/``<video>`` tags
in the user text stay in it and mark where each medium goes (one tag per medium); a text without
tags has its media first. The verdict is the reply's first ``<answer>`` text, stripped (SFT), or
``solution`` (GRPO), and must be exactly one of the accepted strings: the release's accuracy
reward compares the stripped answer with ``solution`` for equality, so anything else can never
earn a reward.

A GRPO video-generation record ("Video 1/2 is better") whose videos are given as one frame list
under ``images`` is read as the release's GRPO loader splits it (``release_frame_halves``): first
half video 1, second half video 2. The release's trainer then shows those frames as separate
images; urt-jax gives them to the model as the two videos (each a video given as frames), as the
task prompt and the release's inference scripts present them.

Files are JSONL (one object per line) or a JSON array. Media paths are resolved under a data root
(a YAML entry's ``image_folder``) and may not escape it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from urt_jax.atomic import replace_with
from urt_jax.data.records import (
    ACCEPTED_VERDICTS,
    PAIRWISE_VERDICTS,
    POINTWISE_PATTERN,
    BenchmarkTag,
    Media,
    PreferenceRecord,
    RecordError,
    task_from_verdict,
)
from urt_jax.rewards import ANSWER_PATTERN, extract_answer


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """``rows`` as a JSONL file, written whole or not at all (a temporary file, then a rename);
    the directory is created if missing."""

    def write(f):
        for row in rows:
            f.write(json.dumps(row) + "\n")

    replace_with(path, write)


def iter_json_objects(path: str) -> Iterator[tuple[int, Any | Exception]]:
    """(line number, object or the JSON error) for a JSONL file or a JSON array file."""
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".json") and raw.lstrip().startswith(b"["):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield raw.count(b"\n", 0, e.start) + 1, RecordError(_not_utf8(raw, e))
            return
        yield from _iter_array(text)
        return
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield number, RecordError(_not_utf8(line, e))
        except json.JSONDecodeError as e:
            yield number, RecordError(f"malformed JSON: {e.msg} (column {e.colno})")


def _not_utf8(raw: bytes, error: UnicodeDecodeError) -> str:
    column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
    return f"invalid UTF-8: byte 0x{raw[error.start]:02x} at column {column}"


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


def _media_list(obj: dict, key: str, single: str, where: str) -> list:
    """The list under ``key``, or ``[obj[single]]`` (the LLaVA-style single medium)."""
    if single in obj and key in obj:
        raise RecordError(f"{where}: give {single!r} or {key!r}, not both")
    if single in obj:
        return [obj[single]]
    values = obj.get(key, [])
    if not isinstance(values, list):
        raise RecordError(f"{where}: field {key!r} must be a list")
    return values


def _fps(obj: dict, where: str) -> float | None:
    fps = obj.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0):
        raise RecordError(f"{where}: field 'fps' must be a positive number, found {fps!r}")
    return float(fps) if fps else None


def _video(value: Any, fps: float | None, resolve: MediaResolver, where: str) -> Media:
    """A video file, or a video given as a list of frame images."""
    if isinstance(value, list):
        return Media("video", frames=tuple(resolve(p, where) for p in value), fps=fps)
    return Media("video", path=resolve(value, where))


def _media(obj: dict, resolve: MediaResolver, where: str) -> tuple[Media, ...]:
    images = _media_list(obj, "images", "image", where)
    videos = _media_list(obj, "videos", "video", where)
    fps = _fps(obj, where)
    return tuple(
        [Media("image", path=resolve(p, where)) for p in images]
        + [_video(v, fps, resolve, where) for v in videos]
    )


def release_frame_halves(frames: list) -> tuple[list, list]:
    """The two videos of a frame list, split as the release's GRPO loader does: first half
    ``frames[:n // 2]``, second half the rest; with more than 8 frames in all, 4 of each half,
    at indices ``int(i * len(first_half) / 4)`` for i in 0..3 (the first half's step is used for
    both halves, as the release does)."""
    n = len(frames)
    first, second = frames[: n // 2], frames[n // 2 :]
    if n > 8:
        step = len(first) / 4
        first = [first[int(i * step)] for i in range(4)]
        second = [second[int(i * step)] for i in range(4)]
    return first, second


def _grpo_media(obj: dict, verdict: str, resolve: MediaResolver, where: str) -> tuple[Media, ...]:
    """A GRPO record's media; a video-generation record's frame list under ``images`` becomes
    its two videos (``release_frame_halves``)."""
    frame_list = (
        verdict in PAIRWISE_VERDICTS["video_generation"]
        and "images" in obj
        and not any(k in obj for k in ("image", "video", "videos"))
    )
    if not frame_list:
        return _media(obj, resolve, where)
    frames = _media_list(obj, "images", "image", where)
    if len(frames) < 2:
        raise RecordError(
            f"{where}: a video-generation record gives its two videos as frames under 'images' "
            f"(first half video 1, second half video 2); found {len(frames)} frame(s)"
        )
    fps = _fps(obj, where)
    return tuple(_video(half, fps, resolve, where) for half in release_frame_halves(frames))


def _system_field(obj: dict, where: str) -> str | None:
    """The top-level ``system`` prompt; an empty one is no system prompt (as in LLaMA-Factory,
    where it falls back to the template's default)."""
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise RecordError(f"{where}: field 'system' must be a string")
    return system or None


# Dialogue fields: (role key, text key, the source's role names -> system/user/assistant).
_DIALOGUES = {
    "messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "conversations": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}


def _turns(obj: dict, key: str, where: str) -> list[tuple[str, str, str]]:
    """(role, the source's role name, text) of every turn of a dialogue field."""
    role_key, text_key, roles = _DIALOGUES[key]
    turns = []
    for i, turn in enumerate(_require(obj, key, where, list)):
        at = f"{where}: {key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{at}: expected an object with {role_key!r} and {text_key!r}")
        name = turn.get(role_key)
        if name not in roles:
            raise RecordError(f"{at}: {role_key} {name!r} is not one of {tuple(roles)}")
        turns.append((roles[name], name, _require(turn, text_key, at)))
    return turns


def _dialogue(obj: dict, key: str, where: str) -> tuple[str | None, str, str]:
    """(system prompt, user text, reply) of a single-turn SFT record."""
    turns = _turns(obj, key, where)
    system = None
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[2] or None
        if "system" in obj:
            raise RecordError(
                f"{where}: give the system prompt as a system turn or as the 'system' field, "
                "not both"
            )
    roles = [role for role, _, _ in turns]
    if roles.count("user") > 1 or roles.count("assistant") > 1:
        raise RecordError(
            f"{where}: {key} has {roles.count('user')} user and {roles.count('assistant')} "
            "assistant turns; only single-turn records (one user turn, one assistant reply) "
            "are supported"
        )
    if roles != ["user", "assistant"]:
        names = [name for _, name, _ in turns]
        raise RecordError(
            f"{where}: {key} must be an optional system turn, one user turn, then one assistant "
            f"reply; found {names}"
        )
    return system if system is not None else _system_field(obj, where), turns[0][2], turns[1][2]


def _accepted(verdict: str, what: str, where: str) -> str:
    """``verdict`` when it is exactly an accepted verdict string, else a RecordError."""
    pairwise = any(verdict in pair for pair in PAIRWISE_VERDICTS.values())
    if not pairwise and not POINTWISE_PATTERN.match(verdict):
        shown = verdict if len(verdict) <= 80 else verdict[:77] + "..."
        raise RecordError(
            f"{where}: {what} {shown!r} is not an accepted verdict; accepted, exactly (the "
            f"release's accuracy reward compares the stripped <answer> text with the solution "
            f"for equality): {ACCEPTED_VERDICTS}"
        )
    return verdict


def _sft_record(obj: dict, key: str, resolve: MediaResolver, where: str, rid: str):
    system, text, reply = _dialogue(obj, key, where)
    has_tag = ANSWER_PATTERN.search(reply) is not None
    what = "the reply's <answer>" if has_tag else "the reply (it has no <answer>...</answer>)"
    verdict = _accepted(extract_answer(reply), what, where)
    for field in ("verdict", "solution"):  # a label carried beside the dialogue must agree
        if field in obj and obj[field] != verdict:
            raise RecordError(
                f"{where}: {field} {obj[field]!r} disagrees with the reply's verdict {verdict!r}"
            )
    media = _media(obj, resolve, where)
    task, mode = task_from_verdict(verdict, any(m.kind == "video" for m in media))
    return PreferenceRecord(
        rid, task, mode, verdict, media, user_text=text, reply=reply, source=where, system=system
    )


def _grpo_record(obj: dict, resolve: MediaResolver, where: str, rid: str):
    verdict = _accepted(_require(obj, "solution", where), "solution", where)
    media = _grpo_media(obj, verdict, resolve, where)
    task, mode = task_from_verdict(verdict, any(m.kind == "video" for m in media))
    text = _require(obj, "problem", where)
    system = _system_field(obj, where)
    return PreferenceRecord(
        rid, task, mode, verdict, media, user_text=text, source=where, system=system
    )


def _native_record(obj: dict, resolve: MediaResolver, where: str, rid: str, labelled: bool):
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise RecordError(f"{where}: field 'answers' must be a list of strings")
    reply = obj.get("reply")
    if reply is not None and not isinstance(reply, str):
        raise RecordError(f"{where}: field 'reply' must be a string")
    return PreferenceRecord(
        rid,
        _require(obj, "task", where),
        obj.get("mode", "pairwise"),
        _require(obj, "verdict", where) if labelled or "verdict" in obj else "",
        _media(obj, resolve, where),
        prompt=_require(obj, "prompt", where),
        answers=tuple(answers),
        reply=reply,
        source=where,
        system=_system_field(obj, where),
        benchmark=_benchmark_field(obj, where),
    )


def _benchmark_field(obj: dict, where: str) -> BenchmarkTag | None:
    """A native record's ``benchmark``: ``{"name", "id", "subset"?, "label"?}``."""
    tag = obj.get("benchmark")
    if tag is None:
        return None
    if not isinstance(tag, dict):
        raise RecordError(f"{where}: field 'benchmark' must be an object with name and id")
    unknown = sorted(set(tag) - {"name", "id", "subset", "label"})
    if unknown:
        raise RecordError(f"{where}: benchmark: unknown key(s) {unknown}")
    subset = tag.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise RecordError(f"{where}: benchmark: 'subset' must be a string")
    try:
        return BenchmarkTag(
            _require(tag, "name", f"{where}: benchmark"),
            str(_require(tag, "id", f"{where}: benchmark", (str, int))),
            subset,
            tag.get("label"),
        )
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from None


def parse_record(
    obj: Any, resolve: MediaResolver, where: str, index: int, labelled: bool = True
) -> PreferenceRecord:
    """One record. ``labelled=False`` (items to be judged) lets native items leave out the
    verdict; the record then carries ``verdict=""``."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    kinds = [k for k in ("messages", "conversations", "problem") if k in obj]
    if len(kinds) > 1:
        raise RecordError(f"{where}: a record has one of {kinds}, not several")
    rid = str(obj.get("id", index))
    if kinds and kinds[0] in _DIALOGUES:
        record = _sft_record(obj, kinds[0], resolve, where, rid)
    elif kinds:
        record = _grpo_record(obj, resolve, where, rid)
    else:
        record = _native_record(obj, resolve, where, rid, labelled)
    return record.validate()


def read_records(
    path: str | os.PathLike, data_root: str | None = None, labelled: bool = True
) -> Iterator[PreferenceRecord | RecordError]:
    """Every record of a data file or dataset YAML, or a RecordError naming its file and line
    where it is bad. A YAML entry's ``image_folder`` is its files' media root (else
    ``data_root``, else the JSON file's directory)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: data file not found")
    if is_dataset_yaml(path):
        yield from _read_dataset_yaml(path, data_root, labelled)
        return
    root = data_root if data_root is not None else os.path.dirname(path)
    yield from _parse_items(path, iter_json_objects(path), MediaResolver(root), labelled)


def _parse_items(
    path: str, items: Iterable, resolve: MediaResolver, labelled: bool, first_index: int = 0
) -> Iterator[PreferenceRecord | RecordError]:
    for index, (line, obj) in enumerate(items, start=first_index):
        where = f"{path}:{line}"
        if isinstance(obj, Exception):
            yield RecordError(f"{where}: {obj}")
            continue
        try:
            yield parse_record(obj, resolve, where, index, labelled)
        except RecordError as e:
            yield e


# ------------------------------------------------------------------------------ dataset YAML
_SAMPLING = re.compile(r"^(first|end|random):([1-9][0-9]*)(%?)$")
_ENTRY_KEYS = {"json_path", "image_folder", "sampling_strategy"}


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One file of a dataset YAML, its paths resolved."""

    json_path: str
    image_folder: str | None
    sampling_strategy: str = "all"


def is_dataset_yaml(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith((".yaml", ".yml"))


def _resolve_listed(value: str, yaml_dir: str) -> str:
    """A path listed in a YAML: as given when absolute or when it exists relative to the working
    directory (how the release's own YAML files are written), else relative to the YAML's
    directory."""
    if os.path.isabs(value) or os.path.exists(value):
        return os.path.abspath(value)
    return os.path.join(yaml_dir, value)


def _entry(item: Any, yaml_dir: str, where: str) -> DatasetEntry:
    if not isinstance(item, dict):
        raise RecordError(f"{where}: expected a mapping with json_path, image_folder")
    unknown = sorted(set(item) - _ENTRY_KEYS)
    if unknown:
        raise RecordError(f"{where}: unknown key(s) {unknown}; expected {sorted(_ENTRY_KEYS)}")
    json_path = _require(item, "json_path", where)
    if not json_path.endswith((".json", ".jsonl")):
        raise RecordError(f"{where}: json_path {json_path!r} must be a .json or .jsonl file")
    folder = item.get("image_folder")
    if folder is not None and not isinstance(folder, str):
        raise RecordError(f"{where}: image_folder must be a string")
    strategy = item.get("sampling_strategy", "all")
    if not isinstance(strategy, str) or not (strategy == "all" or _SAMPLING.match(strategy)):
        raise RecordError(
            f"{where}: sampling_strategy {strategy!r} is not 'all', 'first:N', 'end:N' or "
            "'random:N' (N a positive count or percentage such as '10%')"
        )
    return DatasetEntry(
        _resolve_listed(json_path, yaml_dir),
        _resolve_listed(folder, yaml_dir) if folder else None,
        strategy,
    )


def read_dataset_yaml(path: str | os.PathLike) -> list[DatasetEntry]:
    """The entries of a dataset YAML (``datasets: [{json_path, image_folder,
    sampling_strategy}]``), every entry checked before any file is read."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise RecordError(f"{path}: malformed YAML: {e}") from None
    items = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise RecordError(f"{path}: expected 'datasets:' with a list of files")
    yaml_dir = os.path.dirname(os.path.abspath(path))
    return [_entry(item, yaml_dir, f"{path}: datasets[{i}]") for i, item in enumerate(items)]


def sample_items(items: list, strategy: str, seed: int = 0) -> list:
    """The items a sampling strategy keeps: "all"; "first:N"; "end:N"; "random:N" (N items after
    a shuffle seeded with ``seed``, so every run takes the same ones). N may be "P%": P percent
    of the items, rounded up."""
    if strategy == "all":
        return items
    match = _SAMPLING.match(strategy)
    if match is None:
        raise ValueError(f"unknown sampling strategy {strategy!r}")
    how, n = match.group(1), int(match.group(2))
    if match.group(3):
        n = math.ceil(n * len(items) / 100)
    if how == "first":
        return items[:n]
    if how == "end":
        return items[max(len(items) - n, 0) :]
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:n]


def _read_dataset_yaml(
    path: str, data_root: str | None, labelled: bool
) -> Iterator[PreferenceRecord | RecordError]:
    index = 0
    for entry in read_dataset_yaml(path):
        if not os.path.isfile(entry.json_path):
            raise FileNotFoundError(f"{path}: {entry.json_path}: data file not found")
        root = entry.image_folder or data_root or os.path.dirname(entry.json_path)
        items = sample_items(list(iter_json_objects(entry.json_path)), entry.sampling_strategy)
        yield from _parse_items(entry.json_path, items, MediaResolver(root), labelled, index)
        index += len(items)


def write_dataset_yaml(
    path: str, json_path: str, image_folder: str, sampling_strategy: str = "all"
) -> None:
    """A dataset YAML listing one data file and its media folder (atomic write). The paths are
    written as given: relative ones resolve against the working directory first."""
    entry = {
        "json_path": json_path,
        "image_folder": image_folder,
        "sampling_strategy": sampling_strategy,
    }
    text = yaml.safe_dump({"datasets": [entry]}, sort_keys=False)
    replace_with(path, lambda f: f.write(text))

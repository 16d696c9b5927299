"""One published row of a benchmark as a preference item: its prompt, candidate answers, media,
verdict, subset and label, read as the release's evaluation scripts read them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from urt_jax.data.records import PAIRWISE_VERDICTS, TIE


class RowError(ValueError):
    """A row that cannot be converted; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Embedded:
    """A medium given as encoded bytes; ``name`` is the file name published with it, if any."""

    data: bytes
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Linked:
    """A medium given as a file: a path (relative to the source's folder) or a URL."""

    path: str


MediaRef = Embedded | Linked


@dataclasses.dataclass(frozen=True)
class Item:
    """A converted row; ``item_id`` is the benchmark's own id, None where it has none."""

    task: str
    prompt: str
    media: tuple[MediaRef, ...]
    verdict: str
    label: Any
    answers: tuple[str, ...] = ()
    item_id: str | None = None
    subset: str | None = None


def _field(row: dict, *keys: str) -> Any:
    """The first of ``keys`` the row has, not null."""
    for key in keys:
        if key in row:
            if row[key] is None:
                raise RowError(f"field {key!r} is null")
            return row[key]
    raise RowError(f"missing field {' or '.join(repr(k) for k in keys)}")


def _text(row: dict, key: str) -> str:
    value = _field(row, key)
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, found {type(value).__name__}")
    if not value.strip():
        raise RowError(f"field {key!r} is empty")
    return value


def _item_id(row: dict) -> str:
    value = _field(row, "id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise RowError(f"field 'id' must be a non-empty string or an integer, found {value!r}")
    return str(value)


def media_ref(row: dict, *keys: str) -> MediaRef:
    """A medium as published: an HF Image/Video struct ``{"bytes", "path"}`` (the bytes when
    embedded, else the path), encoded bytes, or a path or URL string."""
    value = _field(row, *keys)
    key = next(k for k in keys if k in row)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        name = value.get("path") if isinstance(value.get("path"), str) else None
        if value.get("bytes"):
            return Embedded(bytes(value["bytes"]), name)
        if name:
            return Linked(name)
        raise RowError(f"field {key!r} has neither bytes nor a path")
    if isinstance(value, bytes | bytearray):
        return Embedded(bytes(value))
    if isinstance(value, str) and value.strip():
        return Linked(value.strip())
    raise RowError(f"field {key!r} is not an image/video (bytes, a path or a URL): {value!r:.80}")


# VL-RewardBench's groups as its release script derives them: the id's prefix (up to the first
# '_' or '-') names the source dataset (case-sensitive), the source names the group.
_VL_SOURCES = {
    "RLAIF": "rlaif-v",
    "RLHF": "rlhf-v",
    "mathverse": "reasoning_tasks",
    "mmmu": "reasoning_tasks",
    "wildvision": "wildvision-battle",
}
_VL_GROUPS = {
    "vlfeedback": "general",
    "povid": "hallucination",
    "reasoning_tasks": "reasoning",
    "rlhf-v": "hallucination",
    "rlaif-v": "hallucination",
    "wildvision-battle": "general",
}


def vl_rewardbench_group(item_id: str) -> str:
    """general, hallucination or reasoning, exactly as the release's script groups ``item_id``
    (any prefix it does not list counts as vlfeedback, i.e. general)."""
    cuts = [i for i in (item_id.find("_"), item_id.find("-")) if i != -1]
    prefix = item_id[: min(cuts)] if cuts else item_id
    return _VL_GROUPS[_VL_SOURCES.get(prefix, "vlfeedback")]


def vl_rewardbench(row: dict) -> Item:
    item_id = _item_id(row)
    responses = _field(row, "response")
    if (
        not isinstance(responses, list)
        or len(responses) != 2
        or not all(isinstance(r, str) for r in responses)
    ):
        raise RowError(f"field 'response' must be a list of 2 strings, found {responses!r:.80}")
    ranking = _field(row, "human_ranking")
    first, second = PAIRWISE_VERDICTS["image_understanding"]
    verdicts = {(0, 1): first, (1, 0): second}
    exact = isinstance(ranking, list) and all(type(r) is int for r in ranking)
    key = tuple(ranking) if exact else None
    if key not in verdicts:
        raise RowError(f"human_ranking {ranking!r} is not [0, 1] or [1, 0]")
    return Item(
        "image_understanding",
        _text(row, "query"),
        (media_ref(row, "image"),),
        verdicts[key],
        label=ranking,
        answers=tuple(responses),
        item_id=item_id,
        subset=vl_rewardbench_group(item_id),
    )


def genai_verdict(vote_type: str, task: str) -> str:
    """The verdict of a GenAI-Bench vote as the release's scripts read it: 'both' or 'tie' in it
    is a tie, else 'left' the first candidate, else 'right' the second."""
    first, second = PAIRWISE_VERDICTS[task]
    if "both" in vote_type or "tie" in vote_type:
        return TIE
    if "left" in vote_type:
        return first
    if "right" in vote_type:
        return second
    raise RowError(
        f"vote_type {vote_type!r} is not one of leftvote, rightvote, tievote, bothbad_vote"
    )


def genai_bench_image(row: dict) -> Item:
    vote = _text(row, "vote_type")
    return Item(
        "image_generation",
        _text(row, "prompt"),
        (media_ref(row, "left_image"), media_ref(row, "right_image")),
        genai_verdict(vote, "image_generation"),
        label=vote,
    )


def genai_bench_video(row: dict) -> Item:
    vote = _text(row, "vote_type")
    return Item(
        "video_generation",
        _text(row, "prompt"),
        (media_ref(row, "left_video", "video_left"), media_ref(row, "right_video", "video_right")),
        genai_verdict(vote, "video_generation"),
        label=vote,
        item_id=_item_id(row) if "id" in row else None,
    )


def videogen_rewardbench(row: dict) -> Item:
    overall = _text(row, "Overall")
    first, second = PAIRWISE_VERDICTS["video_generation"]
    verdicts = {"A": first, "B": second, "same": TIE}
    if overall.strip() not in verdicts:
        raise RowError(f"Overall {overall!r} is not 'A', 'B' or 'same'")
    return Item(
        "video_generation",
        _text(row, "prompt"),
        (media_ref(row, "path_A"), media_ref(row, "path_B")),
        verdicts[overall.strip()],
        label=overall,
    )


CONVERTERS: dict[str, Callable[[dict], Item]] = {
    "vl-rewardbench": vl_rewardbench,
    "genai-bench-image": genai_bench_image,
    "genai-bench-video": genai_bench_video,
    "videogen-rewardbench": videogen_rewardbench,
}

"""One typed record for every preference item: four task kinds, pairwise or pointwise.

Generation tasks compare candidate media (two images or two videos for a caption); understanding
tasks compare candidate answers to a question about one image or video. The ground truth is the
verdict string the model must put inside <answer></answer>.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from urt_jax.rewards import ANSWER_PATTERN, extract_answer

TaskKind = Literal[
    "image_generation", "video_generation", "image_understanding", "video_understanding"
]
TASKS: tuple[str, ...] = (
    "image_generation",
    "video_generation",
    "image_understanding",
    "video_understanding",
)
MODES = ("pairwise", "pointwise")

# The exact verdict strings of the released model (nothing else inside <answer>).
PAIRWISE_VERDICTS: dict[str, tuple[str, str]] = {
    "image_generation": ("Image 1 is better", "Image 2 is better"),
    "video_generation": ("Video 1 is better", "Video 2 is better"),
    "image_understanding": ("Answer 1 is better", "Answer 2 is better"),
    "video_understanding": ("Answer 1 is better", "Answer 2 is better"),
}
POINTWISE_PATTERN = re.compile(r"^Score: (10|[1-9])$")
TIE = "tie"  # evaluation sets may mark ties; never a training target
ACCEPTED_VERDICTS = (
    ", ".join(
        repr(v) for v in dict.fromkeys(v for pair in PAIRWISE_VERDICTS.values() for v in pair)
    )
    + ", or 'Score: N' with N from 1 to 10"
)

# The preference benchmarks `urt-jax data import` reads and `eval.protocol: release` scores.
BENCHMARKS = ("vl-rewardbench", "genai-bench-image", "genai-bench-video", "videogen-rewardbench")

# Where each medium goes in a released user text (LLaMA-Factory's convention).
MEDIA_TAG = re.compile(r"<(image|video)>")


class RecordError(ValueError):
    """A record that violates the schema; the message names the record's source line."""


@dataclasses.dataclass(frozen=True)
class Media:
    """An image or a video. Exactly one of ``path`` (a file under the data root), ``data`` (encoded
    bytes) or ``frames`` (a video given as frame images: paths or encoded bytes) is set."""

    kind: Literal["image", "video"]
    path: str | None = None
    data: bytes | None = None
    frames: tuple[str | bytes, ...] | None = None
    fps: float | None = None  # for a video given as frames: their rate (default 2 fps)

    def __post_init__(self):
        if sum(x is not None for x in (self.path, self.data, self.frames)) != 1:
            raise RecordError(f"{self.kind}: give exactly one of path, data or frames")
        if self.frames is not None and self.kind != "video":
            raise RecordError("frames are only for videos")


@dataclasses.dataclass(frozen=True)
class BenchmarkTag:
    """Where an imported benchmark item comes from: the benchmark (one of ``BENCHMARKS``), the
    item's id there, its subset (VL-RewardBench's source group, ...) and its label as published
    (a tie included), kept so that a benchmark's own accounting can be redone."""

    name: str
    item_id: str
    subset: str | None = None
    label: Any = None

    def __post_init__(self):
        if self.name not in BENCHMARKS:
            raise RecordError(f"benchmark {self.name!r} is not one of {BENCHMARKS}")


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    """One preference item.

    ``media`` is in prompt order: for generation tasks the candidates (pairwise: 2, pointwise: 1),
    for understanding tasks the single image/video the question is about. ``answers`` are the
    candidate answers of understanding tasks. ``prompt`` is the caption or question.
    ``user_text`` is set instead of rendering a template when the source already carries the full
    user prompt (the released SFT and GRPO formats); its ``<image>``/``<video>`` tags, when it has
    any, mark where each medium goes (one tag per medium, in ``media`` order). ``reply`` is the
    assistant's reply for supervised data (``<think>...</think>\\n<answer>...</answer>``); the
    verdict it gives, read as the accuracy reward reads it (``rewards.extract_answer``), must be
    ``verdict``. ``system`` is an optional system prompt.
    """

    id: str
    task: TaskKind
    mode: Literal["pairwise", "pointwise"]
    verdict: str
    media: tuple[Media, ...] = ()
    prompt: str = ""
    answers: tuple[str, ...] = ()
    user_text: str | None = None
    reply: str | None = None
    source: str = ""  # "file:line" for error messages
    system: str | None = None  # a system prompt, rendered as a system turn before the user turn
    benchmark: BenchmarkTag | None = None  # set on items imported from a published benchmark

    def validate(self) -> PreferenceRecord:
        where = self.source or self.id
        if self.task not in TASKS:
            raise RecordError(f"{where}: task {self.task!r} is not one of {TASKS}")
        if self.mode not in MODES:
            raise RecordError(f"{where}: mode {self.mode!r} is not one of {MODES}")
        allowed = allowed_verdicts(self.task, self.mode)
        if self.mode == "pairwise" and self.verdict == TIE and self.reply is None:
            pass  # evaluation sets mark ties; they are never a training target
        elif self.verdict == "" and self.reply is None:
            pass  # an unlabelled item to be judged (urt-jax score)
        elif self.verdict not in allowed and not (
            self.mode == "pointwise" and POINTWISE_PATTERN.match(self.verdict)
        ):
            raise RecordError(f"{where}: verdict {self.verdict!r} is not one of {allowed}")
        kind = "video" if self.task.startswith("video") else "image"
        if any(m.kind != kind for m in self.media):
            raise RecordError(f"{where}: a {self.task} item takes {kind}s only")
        if self.reply is not None:
            _check_reply(self.reply, self.verdict, where)
        if self.user_text is not None:
            check_media_tags(self.user_text, tuple(m.kind for m in self.media), where)
        else:
            n_media, n_answers = expected_counts(self.task, self.mode)
            if len(self.media) != n_media:
                raise RecordError(
                    f"{where}: {self.task} ({self.mode}) needs {n_media} {kind}(s), "
                    f"found {len(self.media)}"
                )
            if len(self.answers) != n_answers:
                raise RecordError(
                    f"{where}: {self.task} ({self.mode}) needs {n_answers} "
                    f"answer(s), found {len(self.answers)}"
                )
            if not self.prompt:
                raise RecordError(f"{where}: missing the caption/question ('prompt')")
        return self

    def swapped(self) -> PreferenceRecord:
        """The pairwise item with its two candidates exchanged and the verdict flipped.

        Only for items whose prompt is rendered from fields and whose reply is not fixed text
        (a reply's reasoning names the candidates by position and would no longer be true).
        """
        if self.mode != "pairwise":
            raise RecordError(f"{self.source or self.id}: only pairwise items can be swapped")
        if self.user_text is not None or self.reply is not None:
            raise RecordError(
                f"{self.source or self.id}: cannot swap an item with a fixed prompt text or reply"
            )
        first, second = PAIRWISE_VERDICTS[self.task]
        verdict = {first: second, second: first}.get(self.verdict, self.verdict)
        if self.task.endswith("generation"):
            return dataclasses.replace(self, media=self.media[::-1], verdict=verdict)
        return dataclasses.replace(self, answers=self.answers[::-1], verdict=verdict)


def _check_reply(reply: str, verdict: str, where: str) -> None:
    """The reply's verdict, read as the accuracy reward reads it (``extract_answer``: the first
    ``<answer>`` text stripped, or the whole reply stripped without one), is the record's."""
    answer = extract_answer(reply)
    if answer == verdict:
        return
    if ANSWER_PATTERN.search(reply) is None:
        raise RecordError(
            f"{where}: the reply has no <answer>...</answer> with the verdict {verdict!r}"
        )
    raise RecordError(
        f"{where}: the reply's <answer> {answer!r} disagrees with the verdict {verdict!r}"
    )


def media_tags(text: str) -> tuple[str, ...]:
    """The kinds of the ``<image>``/``<video>`` tags of a text, in order."""
    return tuple(MEDIA_TAG.findall(text))


def check_media_tags(text: str, kinds: tuple[str, ...], where: str) -> None:
    """A text with tags has one tag per medium, of its kind and in order; no tags is fine (the
    media then come first)."""
    tags = media_tags(text)
    if not tags or tags == kinds:
        return
    for kind in ("image", "video"):
        n_tags, n_media = tags.count(kind), kinds.count(kind)
        if n_tags != n_media:
            raise RecordError(
                f"{where}: the text has {n_tags} <{kind}> tag(s) but the record has "
                f"{n_media} {kind}(s); give one tag per {kind}, or none to put the media first"
            )
    raise RecordError(f"{where}: the <image>/<video> tags are not in the order of the media")


def allowed_verdicts(task: str, mode: str) -> tuple[str, ...]:
    if mode == "pointwise":
        return tuple(f"Score: {i}" for i in range(1, 11))
    return PAIRWISE_VERDICTS[task]


def expected_counts(task: str, mode: str) -> tuple[int, int]:
    """(number of media, number of candidate answers)."""
    if task.endswith("generation"):
        return (2 if mode == "pairwise" else 1), 0
    return 1, (2 if mode == "pairwise" else 1)


def task_from_verdict(verdict: str, has_video: bool) -> tuple[str, str]:
    """(task, mode) implied by a released verdict string (and whether the item has a video)."""
    for task, pair in PAIRWISE_VERDICTS.items():
        if verdict in pair and (
            task.startswith("video") == has_video or task.endswith("generation")
        ):
            return task, "pairwise"
    if POINTWISE_PATTERN.match(verdict):
        return ("video" if has_video else "image") + "_generation", "pointwise"
    raise RecordError(f"verdict {verdict!r} is not a known verdict string")

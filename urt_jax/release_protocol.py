"""Scoring as the release's benchmark scripts score (``eval.protocol: release``).

Each of UnifiedReward-Think's evaluation scripts judges an item once, in an order it draws itself,
decides a hit by the verdict string appearing anywhere in the output, and counts ties its own way.
This module redoes that per benchmark, for items imported with ``urt-jax data import`` (their
``benchmark`` tag says which benchmark, the item's subset and its label as published):

- ``vl-rewardbench``: the order is drawn per item in dataset order, ``random.Random(seed)``,
  swapped when ``random() >= 0.5`` (seed 0 gives the release's own draws); overall accuracy over
  every item, accuracy of each group (general, hallucination, reasoning) and their mean (macro).
- ``genai-bench-image`` / ``genai-bench-video``: ties (``tievote``, ``bothbad_vote``) are not
  judged but count among the items; every other item's order is a coin flip
  (``choices([True, False])``, seeded here, unseeded in the release). Images are resized to
  512 x 512 first. Accuracy is hits over all items (the paper's tau column) and hits over the
  items without a tie (its diff column).
- ``videogen-rewardbench``: the published order, never swapped; ties are judged and a tie is
  right when the output names neither video. The output's verdict is "Video 1" if that string
  appears anywhere, else "Video 2" if it does, else neither. Accuracy over all items (tau) and
  over the items without a tie (diff).

Generation lengths are the release's per task (``RELEASE_MAX_NEW_TOKENS``); pixel limits are the
checkpoint's own (the release's scripts use qwen_vl_utils' defaults, the same numbers as the
Hub's preprocessor configs).
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Sequence

from urt_jax.data.media import open_image
from urt_jax.data.records import PAIRWISE_VERDICTS, TIE, Media, PreferenceRecord, RecordError

# max_new_tokens of the release's inference and evaluation scripts, per task
RELEASE_MAX_NEW_TOKENS = {
    "image_generation": 512,
    "video_generation": 1024,
    "image_understanding": 4096,
    "video_understanding": 1024,
}
GENAI_IMAGE_SIZE = (512, 512)
VL_REWARDBENCH_GROUPS = ("general", "hallucination", "reasoning")
NOT_JUDGED_TIE = "a tie: counted among the items, never judged (as the release's script does)"


@dataclasses.dataclass(frozen=True)
class Item:
    """One item to judge (or, when ``not_judged`` is set, only to count)."""

    order: str  # "original" | "swapped"
    record: PreferenceRecord
    not_judged: str | None = None

    @classmethod
    def in_order(cls, record: PreferenceRecord, swap: bool) -> Item:
        """The record as given, or with its two candidates exchanged (its fixed reply dropped:
        its reasoning names the candidates by position)."""
        if not swap:
            return cls("original", record)
        return cls("swapped", dataclasses.replace(record, reply=None).swapped())


def _resized(record: PreferenceRecord, size: tuple[int, int]) -> PreferenceRecord:
    media = []
    for m in record.media:
        image = open_image(m.path if m.path is not None else m.data).resize(size)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        media.append(Media("image", data=buf.getvalue()))
    return dataclasses.replace(record, media=tuple(media))


def release_items(records: Sequence[PreferenceRecord], seed: int = 0) -> list[Item]:
    """The items of the records, ordered, resized and marked as the release's scripts do; one
    random stream per benchmark, drawn in record order."""
    streams: dict[str, random.Random] = {}
    items = []
    for r in records:
        if r.benchmark is None:
            raise RecordError(
                f"{r.source or r.id}: eval.protocol=release scores items imported with "
                "`urt-jax data import` (a native record with a 'benchmark' tag); this one has none"
            )
        name = r.benchmark.name
        rng = streams.setdefault(name, random.Random(seed))
        if name == "vl-rewardbench":
            items.append(Item.in_order(r, rng.random() >= 0.5))
        elif name in ("genai-bench-image", "genai-bench-video"):
            if r.verdict == TIE:
                items.append(Item("original", r, not_judged=NOT_JUDGED_TIE))
                continue
            if name == "genai-bench-image":
                r = _resized(r, GENAI_IMAGE_SIZE)
            items.append(Item.in_order(r, rng.choices([True, False])[0]))
        else:  # videogen-rewardbench: the published order
            items.append(Item("original", r))
    return items


def is_hit(benchmark: str, task: str, expected: str, output: str) -> bool:
    """Whether the release's script for ``benchmark`` counts ``output`` right."""
    first, second = PAIRWISE_VERDICTS[task]
    if benchmark == "videogen-rewardbench":
        said = first if first in output else second if second in output else TIE
        return said == expected
    if expected == TIE:
        return not (first in output or second in output)
    return expected in output


def _ratio(hits: int, n: int) -> float | None:
    return hits / n if n else None


def benchmark_metrics(name: str, rows: Sequence[dict]) -> dict:
    """One benchmark's figures, as its release script computes them, from its judgement rows
    (items skipped for their length are counted apart and nowhere else)."""
    skipped = [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    hits = [bool(r.get("correct")) for r in rows]
    ties = [r for r in rows if r["tie"]]
    out = {"items": len(rows), "ties": len(ties), "skipped": len(skipped), "hits": sum(hits)}
    if name == "vl-rewardbench":
        groups = {}
        for g in VL_REWARDBENCH_GROUPS:
            in_group = [r for r in rows if r.get("subset") == g]
            groups[g] = _ratio(sum(bool(r["correct"]) for r in in_group), len(in_group))
        present = [v for v in groups.values() if v is not None]
        out |= {
            "overall_accuracy": _ratio(sum(hits), len(rows)),
            "macro_accuracy": sum(present) / 3 if len(present) == 3 else None,
            "groups": groups,
        }
        return out
    tie_hits = sum(bool(r.get("correct")) for r in ties)
    out |= {
        "accuracy": _ratio(sum(hits), len(rows)),
        "accuracy_without_ties": _ratio(sum(hits) - tie_hits, len(rows) - len(ties)),
    }
    return out


def benchmarks_block(judgements: Sequence[dict]) -> dict:
    """``eval.json``'s ``benchmarks``: each benchmark's figures."""
    names = dict.fromkeys(r["benchmark"] for r in judgements if r.get("benchmark"))
    return {
        n: benchmark_metrics(n, [r for r in judgements if r.get("benchmark") == n]) for n in names
    }


# The paper's columns: (benchmark, column title, metric key)
PAPER_COLUMNS = (
    ("vl-rewardbench", "VL-RewardBench overall", "overall_accuracy"),
    ("vl-rewardbench", "VL-RewardBench macro", "macro_accuracy"),
    ("genai-bench-image", "GenAI-Bench image tau", "accuracy"),
    ("genai-bench-image", "GenAI-Bench image diff", "accuracy_without_ties"),
    ("genai-bench-video", "GenAI-Bench video tau", "accuracy"),
    ("genai-bench-video", "GenAI-Bench video diff", "accuracy_without_ties"),
    ("videogen-rewardbench", "VideoGen-RewardBench tau", "accuracy"),
    ("videogen-rewardbench", "VideoGen-RewardBench diff", "accuracy_without_ties"),
)


def paper_table(benchmarks: dict, title: str = "model") -> str:
    """A markdown table with the paper's columns (percentages), for the benchmarks evaluated."""
    columns = [(b, t, k) for b, t, k in PAPER_COLUMNS if b in benchmarks]
    if not columns:
        return ""

    def cell(b: str, k: str) -> str:
        value = benchmarks[b].get(k)
        return "-" if value is None else f"{100 * value:.1f}"

    lines = [
        "| " + " | ".join([title] + [t for _, t, _ in columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
        "| " + " | ".join(["this run"] + [cell(b, k) for b, _, k in columns]) + " |",
    ]
    return "\n".join(lines) + "\n"

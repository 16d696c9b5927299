"""Pairwise and pointwise accuracy of a reward model on a preference set.

Every pairwise item whose prompt is built from fields is judged twice, with the candidates in
their original order and swapped (the expected verdict flips with them), against position bias;
the report gives the accuracy of each order, their mean, and how often the two orders agree on
the same underlying candidate. A judgement is correct when the expected verdict appears in the
text of the first <answer>...</answer> (the whole output when there is none), as the GRPO
accuracy reward reads it; the release's benchmark scripts look for it anywhere in the output.
Ties (verdict "tie") are reported both ways: excluded, and included (correct only when the answer
names no winner). Modes: "cot" (the model reasons, then answers) and "direct" (the reply is
started with an empty <think></think> so that it answers at once).
An item whose prompt is longer than ``data.max_length`` is not judged: its judgement says why
(``skipped``), the summary counts it, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from urt_jax.atomic import write_text
from urt_jax.data.readers import write_jsonl
from urt_jax.data.records import PAIRWISE_VERDICTS, TIE, PreferenceRecord
from urt_jax.generate.prompts import complete
from urt_jax.rewards import extract_answer, format_reward

DIRECT_PREFIX = "<think>\n</think>\n<answer>"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    max_new_tokens: int = 256
    batch_size: int = 8
    swap: bool = True
    mode: str = "cot"  # "cot" | "direct"
    temperature: float = 0.0
    seed: int = 0


def _items(records: Sequence[PreferenceRecord], swap: bool) -> list[tuple[str, PreferenceRecord]]:
    items = []
    for r in records:
        items.append(("original", r))
        swappable = r.mode == "pairwise" and r.user_text is None and r.verdict != TIE
        if swap and swappable:
            items.append(("swapped", dataclasses.replace(r, reply=None).swapped()))
    return items


def judge(
    model,
    tokenizer,
    records: Sequence[PreferenceRecord],
    to_example,
    options: EvalOptions = EvalOptions(),
) -> list[dict]:
    """One judgement per (record, order): the output text, the answer and whether it is right.
    ``to_example`` must build prompt-only examples (ExampleBuilder(include_reply=False))."""
    if options.mode not in ("cot", "direct"):
        raise ValueError(f"mode must be 'cot' or 'direct', found {options.mode!r}")
    items = _items(records, options.swap)
    too_long: dict[int, str] = {}
    texts = complete(
        model,
        tokenizer,
        [record for _, record in items],
        to_example,
        num_samples=1,
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        batch_size=options.batch_size,
        seed=options.seed,
        reply_prefix=DIRECT_PREFIX if options.mode == "direct" else "",
        on_too_long=lambda i, error: too_long.__setitem__(i, str(error)),
    )
    out = []
    for i, ((order, record), text) in enumerate(zip(items, texts, strict=True)):
        row = {"id": record.id, "task": record.task, "order": order, "expected": record.verdict}
        row["tie"] = record.verdict == TIE
        if i in too_long:
            out.append({**row, "skipped": too_long[i]})
            continue
        (text,) = text
        answer = extract_answer(text)
        if record.verdict == TIE:
            correct = not any(v in answer for v in PAIRWISE_VERDICTS[record.task])
        else:
            correct = record.verdict in answer
        out.append(
            {
                **row,
                "answer": answer,
                "output": text,
                "correct": bool(correct),
                "format": format_reward(text) == 1.0,
            }
        )
    return out


def _winner(judgement: dict) -> int | None:
    """Which underlying candidate (0 = the original first) the answer prefers, if any."""
    for pos, verdict in enumerate(PAIRWISE_VERDICTS[judgement["task"]]):
        if verdict in judgement["answer"]:
            return pos if judgement["order"] == "original" else 1 - pos
    return None


def summarize(judgements: Sequence[dict]) -> dict:
    """Accuracies, agreement and format rate over the judged items; items skipped for a prompt
    over ``data.max_length`` are counted apart (``skipped``) and nowhere else."""

    def acc(rows):
        return float(np.mean([r["correct"] for r in rows])) if rows else None

    skipped = {r["id"] for r in judgements if "skipped" in r}
    judgements = [r for r in judgements if r["id"] not in skipped]
    no_ties = [r for r in judgements if not r["tie"]]
    by_id: dict[str, dict] = {}
    for r in no_ties:
        by_id.setdefault(r["id"], {})[r["order"]] = r
    pairs = [v for v in by_id.values() if len(v) == 2]
    agree = [
        _winner(v["original"]) is not None and _winner(v["original"]) == _winner(v["swapped"])
        for v in pairs
    ]
    tasks = sorted({r["task"] for r in judgements})
    return {
        "accuracy": acc(no_ties),
        "accuracy_with_ties": acc(list(judgements)),
        "accuracy_original_order": acc([r for r in no_ties if r["order"] == "original"]),
        "accuracy_swapped_order": acc([r for r in no_ties if r["order"] == "swapped"]),
        "order_agreement": float(np.mean(agree)) if agree else None,
        "format_rate": float(np.mean([r["format"] for r in judgements])) if judgements else None,
        "per_task": {t: acc([r for r in no_ties if r["task"] == t]) for t in tasks},
        "judgements": len(judgements),
        "items": len({r["id"] for r in judgements}),
        "ties": len({r["id"] for r in judgements if r["tie"]}),
        "skipped": len(skipped),
    }


def format_value(x: float | None) -> str:
    """A summary figure as the reports print it ("-" when there is nothing to count)."""
    return "-" if x is None else f"{x:.3f}"


def markdown_table(summary: dict, title: str = "evaluation") -> str:
    rows = [f"| {title} | value |", "|---|---|"]
    for key in (
        "accuracy",
        "accuracy_with_ties",
        "accuracy_original_order",
        "accuracy_swapped_order",
        "order_agreement",
        "format_rate",
    ):
        rows.append(f"| {key} | {format_value(summary[key])} |")
    for task, value in summary["per_task"].items():
        rows.append(f"| accuracy: {task} | {format_value(value)} |")
    rows.append(f"| items / judgements | {summary['items']} / {summary['judgements']} |")
    if summary.get("skipped"):
        rows.append(f"| items skipped: prompt over data.max_length | {summary['skipped']} |")
    return "\n".join(rows) + "\n"


def write_report(summary: dict, judgements: Sequence[dict], out_dir: str) -> None:
    """judgements.jsonl, eval.md and eval.json, each written whole or not at all (an earlier
    report stays as it was if this one fails part-way), eval.json last."""
    write_jsonl(os.path.join(out_dir, "judgements.jsonl"), judgements)
    write_text(os.path.join(out_dir, "eval.md"), markdown_table(summary))
    write_text(os.path.join(out_dir, "eval.json"), json.dumps(summary, indent=2))

"""Pairwise and pointwise accuracy of a reward model on a preference set.

Two protocols (``eval.protocol``):

- ``both_orders`` (the default): every pairwise item whose prompt is built from fields is judged
  twice, with the candidates in their original order and swapped (the expected verdict flips with
  them), against position bias; the report gives the accuracy of each order, their mean, and how
  often the two orders agree on the same underlying candidate. A judgement is correct when the
  expected verdict appears in the text of the first <answer>...</answer> (the whole output when
  there is none), as the GRPO accuracy reward reads it. Ties (verdict "tie") are reported both
  ways: excluded, and included (correct only when the answer names no winner).
- ``release``: items imported from the paper's benchmarks are judged once each and counted as the
  release's benchmark scripts count them (``release_protocol``): its order draws, the verdict
  string anywhere in the output, its tie rules and its per-benchmark figures.

Modes: "cot" (the model reasons, then answers) and "direct" (the reply is started with an empty
<think></think> so that it answers at once). Generation lengths default to the release's per task.
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
from urt_jax.release_protocol import (
    RELEASE_MAX_NEW_TOKENS,
    Item,
    benchmarks_block,
    is_hit,
    paper_table,
    release_items,
)
from urt_jax.rewards import extract_answer, format_reward

DIRECT_PREFIX = "<think>\n</think>\n<answer>"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    max_new_tokens: int | None = None  # None: the release's length for each item's task
    batch_size: int = 8
    protocol: str = "both_orders"  # "both_orders" | "release" (see release_protocol)
    swap: bool = True  # both_orders: judge pairwise items in both candidate orders
    order_seed: int = 0  # release: the seed of the candidate-order draws
    mode: str = "cot"  # "cot" | "direct"
    temperature: float = 0.0
    seed: int = 0


PROTOCOLS = ("both_orders", "release")


def _items(records: Sequence[PreferenceRecord], swap: bool) -> list[Item]:
    items = []
    for r in records:
        items.append(Item.in_order(r, False))
        swappable = r.mode == "pairwise" and r.user_text is None and r.verdict != TIE
        if swap and swappable:
            items.append(Item.in_order(r, True))
    return items


def _completions(model, tokenizer, records, to_example, options: EvalOptions) -> tuple[list, dict]:
    """One greedy completion per record (None where the prompt is too long, with the reason in
    the returned mapping), generated in one pass per generation length."""
    lengths = [options.max_new_tokens or RELEASE_MAX_NEW_TOKENS[r.task] for r in records]
    texts: list = [None] * len(records)
    too_long: dict[int, str] = {}
    for length in sorted(set(lengths)):
        indices = [i for i, n in enumerate(lengths) if n == length]
        outputs = complete(
            model,
            tokenizer,
            [records[i] for i in indices],
            to_example,
            num_samples=1,
            max_new_tokens=length,
            temperature=options.temperature,
            batch_size=options.batch_size,
            seed=options.seed,
            reply_prefix=DIRECT_PREFIX if options.mode == "direct" else "",
            on_too_long=lambda j, error, idx=indices: too_long.__setitem__(idx[j], str(error)),
        )
        for i, text in zip(indices, outputs, strict=True):
            texts[i] = text
    return texts, too_long


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
    if options.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, found {options.protocol!r}")
    release = options.protocol == "release"
    items = release_items(records, options.order_seed) if release else _items(records, options.swap)
    judged = [i for i, item in enumerate(items) if item.not_judged is None]
    texts, too_long = _completions(
        model, tokenizer, [items[i].record for i in judged], to_example, options
    )
    outputs: list[str | None] = [None] * len(items)
    reasons: dict[int, str] = {}
    for k, i in enumerate(judged):
        if k in too_long:
            reasons[i] = too_long[k]
        else:
            (outputs[i],) = texts[k]
    return judgements(items, outputs, reasons, release)


def judgements(
    items: Sequence[Item], outputs: Sequence[str | None], too_long: dict[int, str], release: bool
) -> list[dict]:
    """The judgement rows of ``items`` given each one's output text (None for an item not judged
    or too long; ``too_long`` maps an item's index to why), counted by the release's hit rule
    when ``release``, else by the <answer> text."""
    return [_judgement(item, outputs[i], too_long.get(i), release) for i, item in enumerate(items)]


def _judgement(item: Item, text: str | None, too_long: str | None, release: bool) -> dict:
    record = item.record
    row = {"id": record.id, "task": record.task, "order": item.order, "expected": record.verdict}
    row["tie"] = record.verdict == TIE
    if record.benchmark is not None:
        row |= {"benchmark": record.benchmark.name, "subset": record.benchmark.subset}
    if item.not_judged is not None:
        return {**row, "not_judged": item.not_judged}
    if too_long is not None:
        return {**row, "skipped": too_long}
    answer = extract_answer(text)
    if release:
        correct = is_hit(record.benchmark.name, record.task, record.verdict, text)
    elif record.verdict == TIE:
        correct = not any(v in answer for v in PAIRWISE_VERDICTS[record.task])
    else:
        correct = record.verdict in answer
    return {
        **row,
        "answer": answer,
        "output": text,
        "correct": bool(correct),
        "format": format_reward(text) == 1.0,
    }


def _winner(judgement: dict) -> int | None:
    """Which underlying candidate (0 = the original first) the answer prefers, if any."""
    for pos, verdict in enumerate(PAIRWISE_VERDICTS[judgement["task"]]):
        if verdict in judgement["answer"]:
            return pos if judgement["order"] == "original" else 1 - pos
    return None


def summarize(judgements: Sequence[dict], protocol: str = "both_orders") -> dict:
    """Accuracies, agreement and format rate over the judged items; items skipped for a prompt
    over ``data.max_length`` are counted apart (``skipped``) and nowhere else. Under the release
    protocol, ``benchmarks`` holds each benchmark's figures as its release script counts them."""
    release = benchmarks_block(judgements) if protocol == "release" else None
    judgements = [r for r in judgements if "not_judged" not in r]

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
        "protocol": protocol,
        **({"benchmarks": release} if release is not None else {}),
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
    if summary.get("invalid"):
        rows.append(f"| items not judged: invalid (judgements.jsonl) | {summary['invalid']} |")
    text = "\n".join(rows) + "\n"
    if summary.get("benchmarks"):
        text += "\nThe paper's columns (percent; as the release's scripts count):\n\n"
        text += paper_table(summary["benchmarks"])
        text += "\n" + benchmark_counts_table(summary["benchmarks"])
    return text


def benchmark_counts_table(benchmarks: dict) -> str:
    """Per benchmark: items, hits, ties, skipped, and VL-RewardBench's groups."""
    rows = ["| benchmark | items | hits | ties | skipped | groups |", "|---|---|---|---|---|---|"]
    for name, m in benchmarks.items():
        groups = ", ".join(f"{g} {format_value(v)}" for g, v in m.get("groups", {}).items())
        rows.append(
            f"| {name} | {m['items']} | {m['hits']} | {m['ties']} | {m['skipped']} | "
            f"{groups or '-'} |"
        )
    return "\n".join(rows) + "\n"


def write_report(summary: dict, judgements: Sequence[dict], out_dir: str) -> None:
    """judgements.jsonl, eval.md and eval.json, each written whole or not at all (an earlier
    report stays as it was if this one fails part-way), eval.json last."""
    write_jsonl(os.path.join(out_dir, "judgements.jsonl"), judgements)
    write_text(os.path.join(out_dir, "eval.md"), markdown_table(summary))
    write_text(os.path.join(out_dir, "eval.json"), json.dumps(summary, indent=2))


def evaluate_model(
    cfg, model_dir: str, records: Sequence, out_dir: str, invalid: Sequence[str] = ()
) -> dict:
    """Greedy judgements of the held-out records (both candidate orders, or as the release's
    scripts judge them: ``eval.protocol``) by the model in ``model_dir``; writes eval.json,
    eval.md and judgements.jsonl under out_dir and returns the summary. ``invalid``: the errors
    of items that could not be judged, written to judgements.jsonl (``line``, ``error``) and
    counted in the summary."""
    from urt_jax.config import options_from
    from urt_jax.run_inputs import first_records, generation_setup
    from urt_jax.sharding.mesh import wait_for_writer, writes_here

    if cfg.eval.protocol == "release" and (cfg.data.min_pixels or cfg.data.max_pixels):
        print(
            "[urt-jax] warning: eval.protocol=release with data.min_pixels/max_pixels set; the "
            "release's scripts size images with the checkpoint's own limits (leave both null to "
            "match)",
            flush=True,
        )
    model, builder = generation_setup(cfg, model_dir)
    records = first_records(records, cfg.eval.max_items)
    options = options_from(EvalOptions, cfg.eval, seed=cfg.seed)
    judgements = judge(model, builder.tokenizer, records, builder, options)
    summary = summarize(judgements, options.protocol)
    summary["invalid"] = len(invalid)
    errors = [dict(zip(("line", "error"), e.split(": ", 1), strict=False)) for e in invalid]
    if writes_here():
        write_report(summary, [*judgements, *errors], out_dir)
    wait_for_writer(f"eval {out_dir}")
    return summary

"""Evaluation: the accounting of swapped orders, agreement and ties, and judging with a model."""

import dataclasses
import os

import numpy as np
import pytest

from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.pipeline import load_records
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import load_tokenizer
from urt_jax.evaluate import EvalOptions, judge, markdown_table, summarize, write_report
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.sharding.init import init_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _j(rid, order, expected, answer, tie=False, task="image_generation"):
    return {
        "id": rid,
        "task": task,
        "order": order,
        "expected": expected,
        "answer": answer,
        "correct": (expected in answer) if not tie else ("better" not in answer),
        "format": True,
        "tie": tie,
    }


def test_summary_counts_orders_agreement_and_ties():
    rows = [
        # item a: right in both orders, and consistent (candidate 0 wins both times)
        _j("a", "original", "Image 1 is better", "Image 1 is better"),
        _j("a", "swapped", "Image 2 is better", "Image 2 is better"),
        # item b: position bias: always says "Image 1": right once, inconsistent
        _j("b", "original", "Image 2 is better", "Image 1 is better"),
        _j("b", "swapped", "Image 1 is better", "Image 1 is better"),
        # item c: a tie, answered with a winner: wrong when ties count
        _j("c", "original", "tie", "Image 2 is better", tie=True),
    ]
    s = summarize(rows)
    assert s["accuracy"] == pytest.approx(3 / 4)
    assert s["accuracy_with_ties"] == pytest.approx(3 / 5)
    assert s["accuracy_original_order"] == pytest.approx(1 / 2)
    assert s["accuracy_swapped_order"] == pytest.approx(1.0)
    assert s["order_agreement"] == pytest.approx(1 / 2)
    assert s["items"] == 3 and s["ties"] == 1
    table = markdown_table(s)
    assert "| accuracy | 0.750 |" in table and "| order_agreement | 0.500 |" in table


def test_a_report_that_fails_part_way_leaves_the_previous_one(tmp_path):
    rows = [
        _j("a", "original", "Image 1 is better", "Image 1 is better"),
        _j("a", "swapped", "Image 2 is better", "Image 1 is better"),
    ]
    write_report(summarize(rows), rows, str(tmp_path))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert sorted(before) == ["eval.json", "eval.md", "judgements.jsonl"]
    broken = rows + [{**rows[0], "output": {"not", "json"}}]  # a set: not JSON-serialisable
    with pytest.raises(TypeError):
        write_report(summarize(rows[:1]), broken, str(tmp_path))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # no .tmp left either


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    paths = write_synthetic(
        str(out), 4, 4, seed=4, cfg=SyntheticConfig(image_size=56, num_frames=4)
    )
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    tokenizer = load_tokenizer()
    builder = ExampleBuilder(
        tokenizer,
        Templates.load(os.path.join(ROOT, "configs", "templates", "short.yaml")),
        config,
        ProcessorConfig(max_pixels=3136, max_frames=4),
        include_reply=False,
    )
    return init_model(config, seed=0), tokenizer, builder, load_records(paths["heldout"], str(out))


@pytest.mark.parametrize("mode", ["cot", "direct"])
def test_judge_runs_both_orders(setup, mode):
    model, tokenizer, builder, records = setup
    opts = EvalOptions(max_new_tokens=6, batch_size=4, mode=mode)
    rows = judge(model, tokenizer, records, builder, opts)
    assert len(rows) == 2 * len(records)  # every synthetic item is swappable
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], {})[r["order"]] = r
    for pair in by_id.values():
        assert {pair["original"]["expected"], pair["swapped"]["expected"]} in (
            {"Image 1 is better", "Image 2 is better"},
            {"Video 1 is better", "Video 2 is better"},
            {"Answer 1 is better", "Answer 2 is better"},
        )
    if mode == "direct":
        assert all(r["output"].startswith("<think>\n</think>\n<answer>") for r in rows)
    again = judge(model, tokenizer, records, builder, opts)
    assert [r["output"] for r in again] == [r["output"] for r in rows]  # greedy: reproducible
    s = summarize(rows)
    assert 0.0 <= s["accuracy"] <= 1.0 and s["items"] == len(records)
    assert np.isfinite(s["format_rate"])


def test_prompts_over_max_length_are_skipped_and_counted(setup):
    model, tokenizer, builder, records = setup
    lengths = [len(builder(r)["input_ids"]) for r in records]
    limit = max(lengths) - 1  # the videos' prompts are the longest
    assert min(lengths) <= limit
    too_long = {r.id for r, n in zip(records, lengths, strict=True) if n > limit}
    short = dataclasses.replace(builder, max_length=limit)
    rows = judge(model, tokenizer, records, short, EvalOptions(max_new_tokens=4, batch_size=2))
    skipped = [r for r in rows if "skipped" in r]
    assert {r["id"] for r in skipped} == too_long
    assert all("exceeds max_length" in r["skipped"] and "output" not in r for r in skipped)
    assert all(isinstance(r["output"], str) for r in rows if r["id"] not in too_long)
    s = summarize(rows)
    assert s["skipped"] == len(too_long) and s["items"] == len(records) - len(too_long)
    assert f"| items skipped: prompt over data.max_length | {len(too_long)} |" in markdown_table(s)

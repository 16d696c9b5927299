"""The paper's table on the demo's exported judge: the four benchmarks imported from their download
folders and evaluated under each protocol through the command line."""

import json

import pytest

from tests.benchmark_fixtures import write_downloaded_benchmarks
from tests.conftest import working_directory
from urt_jax.cli import main as cli_main
from urt_jax.data.records import BENCHMARKS

# generous lengths: the shipped templates' prompts, not the demo's short ones
EVAL = ["data.max_length=1024", "data.bucket_lengths=[1024]", "eval.max_new_tokens=6"]


@pytest.fixture(scope="module")
def imported(demo_workdir):
    bench = demo_workdir / "paper-benchmarks"
    sources = write_downloaded_benchmarks(str(bench))
    out = demo_workdir / "bench"
    with working_directory(demo_workdir):
        for name in BENCHMARKS:
            assert cli_main(["data", "import", name, sources[name], str(out)]) == 0, name
    return demo_workdir, out


def _evaluate(work, bench, protocol: str, out: str) -> tuple[dict, list[dict]]:
    argv = [
        "eval",
        "configs/demo.yaml",
        "--model",
        "runs/demo/hf",
        f"data.heldout={bench / 'benchmarks.yaml'}",
        "data.templates=configs/templates/unifiedreward_think.yaml",
        f"eval.protocol={protocol}",
        f"output_dir={out}",
        *EVAL,
    ]
    with working_directory(work):
        assert cli_main(argv) == 0
    folder = work / out / "eval"
    summary = json.load(open(folder / "eval.json"))
    rows = [json.loads(line) for line in open(folder / "judgements.jsonl")]
    return summary, rows


def test_release_protocol_on_the_demo_judge(imported):
    work, bench = imported
    summary, rows = _evaluate(work, bench, "release", "paper_release")
    assert summary["protocol"] == "release" and summary["skipped"] == 0
    assert len(rows) == 6 + 4 + 3 + 4  # one judgement per item
    # the figures of eval.json, counted again from the judgements the run wrote
    for name, figures in summary["benchmarks"].items():
        own = [r for r in rows if r["benchmark"] == name]
        judged = [r for r in own if "not_judged" not in r]
        for r in judged:  # the release's hit rule: the verdict string anywhere in the output
            if name == "videogen-rewardbench":
                said = next(
                    (v for v in ("Video 1 is better", "Video 2 is better") if v in r["output"]),
                    "tie",
                )
                assert r["correct"] == (said == r["expected"])
            else:
                assert r["correct"] == (r["expected"] in r["output"])
        hits = sum(r["correct"] for r in judged)
        ties = sum(r["tie"] for r in own)
        assert (figures["items"], figures["hits"], figures["ties"]) == (len(own), hits, ties)
        if name == "vl-rewardbench":
            assert figures["overall_accuracy"] == pytest.approx(hits / len(own))
            assert {r["subset"] for r in own} == {"general", "hallucination", "reasoning"}
        else:
            tie_hits = sum(r["correct"] for r in judged if r["tie"])
            assert figures["accuracy"] == pytest.approx(hits / len(own))
            assert figures["accuracy_without_ties"] == pytest.approx(
                (hits - tie_hits) / (len(own) - ties)
            )
    assert {r["id"] for r in rows if "not_judged" in r} == {
        r["id"] for r in rows if r["tie"] and r["benchmark"].startswith("genai")
    }
    table = open(work / "paper_release" / "eval" / "eval.md").read()
    assert "| model | VL-RewardBench overall | VL-RewardBench macro |" in table
    assert table.count("| this run |") == 1


def test_both_orders_protocol_on_the_same_items(imported):
    work, bench = imported
    summary, rows = _evaluate(work, bench, "both_orders", "paper_both")
    assert summary["protocol"] == "both_orders" and "benchmarks" not in summary
    ties = 2 + 1 + 1
    assert summary["items"] == 17 and summary["ties"] == ties
    assert len(rows) == 2 * (17 - ties) + ties  # every non-tie item in both orders

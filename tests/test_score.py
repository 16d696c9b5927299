"""`urt-jax score`: unlabelled items are judged and written with their CoT; labelled ones are
scored; bad items are refused with their line."""

import dataclasses
import json
import os

import pytest

from urt_jax.cli import main as cli_main
from urt_jax.config import load_run_config
from urt_jax.data.records import RecordError
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import save_pretrained
from urt_jax.resources import DEMO_TOKENIZER_DIR
from urt_jax.run_inputs import generation_setup
from urt_jax.score import read_items
from urt_jax.sharding.init import init_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    out = tmp_path_factory.mktemp("score")
    paths = write_synthetic(
        str(out), 3, 1, seed=5, cfg=SyntheticConfig(image_size=56, num_frames=4)
    )
    rows = [json.loads(line) for line in open(paths["train"])]
    for row in rows[1:]:
        del row["verdict"], row["reply"]  # items to be judged carry no label
    path = out / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_dir = str(out / "model")
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    save_pretrained(init_model(config, seed=0), model_dir, source_dir=DEMO_TOKENIZER_DIR)
    return str(path), model_dir, rows


def test_score_writes_verdicts_and_cot(items, tmp_path, capsys):
    path, model_dir, rows = items
    output = tmp_path / "judged.jsonl"
    argv = ["score", path, "eval.max_new_tokens=6", "--model", model_dir, "--config", DEMO]
    assert cli_main([*argv, "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 3 and summary["labelled"] == 1
    judged = [json.loads(line) for line in output.read_text().splitlines()]
    assert [j["id"] for j in judged] == [r["id"] for r in rows]
    assert "expected" in judged[0] and "expected" not in judged[1]
    assert all(isinstance(j["output"], str) and "verdict" in j for j in judged)


def test_bad_items_get_an_error_line_and_the_rest_are_judged(items, tmp_path, capsys):
    """A malformed item, an item whose image is corrupt and one whose image is missing each get
    a line naming their source line and what is wrong, in their place; every other item is
    judged; the command exits 1."""
    path, model_dir, rows = items
    root = os.path.dirname(path)
    with open(os.path.join(root, "corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not an image")
    bad_answers = dict(rows[2], answers=["only one"])  # an understanding pair needs two answers
    bad_image = dict(rows[0], images=["corrupt.png", rows[0]["images"][1]])
    missing = dict(rows[0], images=["nowhere.png", rows[0]["images"][1]])
    lines = [rows[1], bad_answers, rows[2], bad_image, missing]
    file = tmp_path / "mixed.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in lines))
    output = tmp_path / "judged.jsonl"
    argv = ["score", str(file), "eval.max_new_tokens=4", "--config", DEMO, "--data-root", root]
    assert cli_main([*argv, "--model", model_dir, "--output", str(output)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 2 and summary["invalid"] == 3
    judged = [json.loads(line) for line in output.read_text().splitlines()]
    assert [j.get("line", "").rsplit(":", 1)[-1] for j in judged] == ["", "2", "", "4", "5"]
    assert "needs 2 answer" in judged[1]["error"]
    assert "cannot decode image" in judged[3]["error"] and "corrupt.png" in judged[3]["error"]
    assert "not found" in judged[4]["error"]
    assert [j["id"] for j in judged if "verdict" in j] == [rows[1]["id"], rows[2]["id"]]
    items_read = read_items(str(file), root)
    assert [isinstance(x, RecordError) for x in items_read] == [False, True, False, True, True]
    assert load_run_config(DEMO).eval.mode == "cot"


def test_items_over_max_length_are_skipped_not_fatal(items, tmp_path, capsys):
    path, model_dir, rows = items
    cfg = load_run_config(DEMO)
    _, builder = generation_setup(cfg, model_dir)
    records = read_items(path, os.path.dirname(path))
    lengths = [len(builder(dataclasses.replace(r, reply=None))["input_ids"]) for r in records]
    limit = max(lengths) - 1
    too_long = [r["id"] for r, n in zip(rows, lengths, strict=True) if n > limit]
    assert 0 < len(too_long) < len(rows)
    output = tmp_path / "judged.jsonl"
    argv = ["score", path, "eval.max_new_tokens=4", f"data.max_length={limit}", "--config", DEMO]
    assert cli_main([*argv, "--model", model_dir, "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == len(too_long) and summary["items"] == len(rows) - len(too_long)
    judged = [json.loads(line) for line in output.read_text().splitlines()]
    assert [j["id"] for j in judged] == [r["id"] for r in rows]  # one line per item, in order
    for j in judged:
        assert ("skipped" in j) == (j["id"] in too_long)
        assert ("verdict" in j) != (j["id"] in too_long)

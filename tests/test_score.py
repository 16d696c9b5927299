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
from urt_jax.pipeline import generation_setup
from urt_jax.resources import DEMO_TOKENIZER_DIR
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


def test_unlabelled_items_must_still_be_well_formed(items, tmp_path):
    path, _, rows = items
    bad = dict(rows[2], answers=["only one"])  # an understanding pair needs two answers
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps(rows[2]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: .*needs 2 answer"):
        read_items(str(file), os.path.dirname(path))
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

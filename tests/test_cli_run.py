"""`urt-jax run` on the embedded demo config: runs, writes a report, resumes."""

import json
import os

import pytest
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
)

from urt_jax.cli import main as cli_main
from urt_jax.config import RunConfigError, load_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
SMALL = [
    "data.synthetic.n_train=8",
    "data.synthetic.n_heldout=4",
    "train.max_steps=2",
    "eval.max_new_tokens=4",
    "eval.max_items=2",
    "rejection.max_prompts=2",
    "rejection.max_new_tokens=4",
    "rejection.samples_per_prompt=2",
]


def test_demo_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["run", DEMO, f"output_dir={out}", *SMALL]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages_done"] == [
        "init",
        "data",
        "forward",
        "eval",
        "sft",
        "eval.2",
        "sample",
        "rs_sft",
        "eval.3",
        "export",
    ]
    assert "skipped" in report["rs_sft"]  # 2 prompts x 2 samples of 4 tokens: none correct
    assert report["rejection_sampling"]["samples"] == 4
    assert (out / "rejection_sampling" / "sft.jsonl").exists()
    assert (out / "rejection_sampling" / "grpo.jsonl").exists()
    assert [s["name"] for s in report["stages"]] == ["eval:init_hf", "eval:sft", "eval:sft"]
    assert 0 <= report["final"]["accuracy"] <= 1
    assert (out / "eval" / "eval.md").exists()
    assert os.path.exists(report["sft"]["metrics"]) and report["sft"]["steps"] == 2
    assert report["data"]["train"]["records"] == 8
    assert set(report["data"]["train"]["tasks"]) == {
        "image_generation",
        "video_generation",
        "image_understanding",
        "video_understanding",
    }
    assert report["forward"]["logits_finite"] and report["forward"]["vision_patches"] > 0
    assert report["export"]["reload_max_abs_diff"] == {"hf": 0.0, "orbax": 0.0}
    # the export carries a tokenizer and processor files that transformers loads
    hf_dir = str(out / "hf")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 4012
    assert tokenizer.chat_template
    processor = AutoImageProcessor.from_pretrained(hf_dir, backend="pil")
    assert processor.size["longest_edge"] == 3136 and processor.size["shortest_edge"] == 3136
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir)
    assert model.config.image_token_id == 4012
    capsys.readouterr()
    assert cli_main(["run", DEMO, f"output_dir={out}", *SMALL]) == 0
    assert capsys.readouterr().out.count("already done") == 10


def test_config_typos_are_errors(tmp_path):
    with pytest.raises(RunConfigError, match=r"unknown key\(s\) \['sed'\]"):
        load_run_config(DEMO, ["sed=1"])
    with pytest.raises(RunConfigError, match=r"model.*unknown key\(s\) \['dtpye'\]"):
        load_run_config(DEMO, ["model.dtpye=bfloat16"])
    with pytest.raises(RunConfigError, match=r"seed: expected int"):
        load_run_config(DEMO, ["seed=abc"])
    assert cli_main(["run", DEMO, f"output_dir={tmp_path}", "stages=[train]"]) == 2


@pytest.mark.parametrize(
    "name",
    sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "configs"))
        for d, _, files in os.walk(os.path.join(ROOT, "configs"))
        for f in files
        if f.endswith(".yaml") and os.path.basename(d) in ("configs", "pod")
    ),
)
def test_every_shipped_run_config_loads(name):
    cfg = load_run_config(os.path.join(ROOT, "configs", name))
    assert cfg.train.max_steps > 0 and cfg.data.batch_size > 0

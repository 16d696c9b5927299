"""`urt-jax run` on the embedded demo config: runs, writes a report, resumes."""

import json
import os

import pytest
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
)

from tests.conftest import DEMO_SMALL
from urt_jax.cli import main as cli_main
from urt_jax.config import RunConfigError, load_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")


def test_demo_runs_and_resumes(demo_workdir, capsys):
    out = demo_workdir / "runs" / "demo"
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
        "grpo",
        "eval.3",
        "export",
    ]
    assert "skipped" in report["rs_sft"]  # 2 prompts x 2 samples of 4 tokens: none correct
    assert report["rejection_sampling"]["samples"] == 4
    assert (out / "rejection_sampling" / "sft.jsonl").exists()
    assert (out / "rejection_sampling" / "grpo.jsonl").exists()
    assert [s["name"] for s in report["stages"]] == ["eval:init_hf", "eval:sft", "eval:grpo"]
    # GRPO ran on the wrongly answered prompts from the cold-started model
    assert report["grpo"]["steps"] == 1 and report["grpo"]["prompts"] == 2
    grpo_metrics = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").open()]
    assert grpo_metrics[0]["step"] == 1 and "reward/accuracy" in grpo_metrics[0]
    assert len((out / "grpo" / "completions.jsonl").read_text().splitlines()) == 4
    assert set(report["plots"]) == {"accuracy_per_stage", "grpo", "sft_loss"}
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in report["plots"].values())
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
    assert processor.size["longest_edge"] == 12544 and processor.size["shortest_edge"] == 3136
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir)
    assert model.config.image_token_id == 4012
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which image is better?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3
    capsys.readouterr()
    assert cli_main(["run", DEMO, f"output_dir={out}", *DEMO_SMALL]) == 0
    assert capsys.readouterr().out.count("already done") == 11


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
    g = cfg.grpo
    rows = g.prompts_per_step * g.num_generations
    assert rows % (g.micro_batch_rows or rows) == 0, "grpo.micro_batch_rows must divide the rows"


def test_data_check_counts_tokens_as_the_run_does(demo_workdir, capsys):
    """`data check --config` tokenises with the run's tokenizer, templates and pixel limits: its
    token range is the run's own (the data stage counted every record of this small set)."""
    out = demo_workdir / "runs" / "demo"
    report = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    argv = ["data", "check", str(out / "data" / "train.jsonl"), "--config", DEMO, *DEMO_SMALL]
    assert cli_main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    stats = report["data"]["train"]
    assert f"{stats['records']} record(s) checked, OK" in line, line
    assert f"-{stats['tokens_max']} tokens per record" in line, line


def test_a_rerun_with_other_settings_never_reuses_old_results(demo_workdir, tmp_path, capsys):
    """A finished stage whose settings changed stops the run, naming the keys; --redo runs it
    again with the stages that read its outputs, and leaves the others alone."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(demo_workdir / "runs" / "demo", out)
    before = json.loads((out / "report.json").read_text())
    argv = ["run", DEMO, f"output_dir={out}", *DEMO_SMALL, "grpo.max_steps=2"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "stage 'grpo' was run with other settings (grpo.max_steps: 1 -> 2)" in err, err
    assert "'grpo', 'eval.3', 'export'" in err and "--redo" in err
    assert cli_main([*argv, "--redo"]) == 0
    after = json.loads((out / "report.json").read_text())
    assert after["stages_done"] == before["stages_done"]
    assert after["grpo"]["steps"] == 2
    for key in ("init", "data", "forward", "eval", "sft", "eval.2", "sample", "rs_sft"):
        assert after["seconds"][key] == before["seconds"][key], key  # not run again
    assert [s["stage"] for s in after["stages"]] == ["eval", "eval.2", "eval.3"]
    capsys.readouterr()
    assert cli_main(argv) == 0  # now recorded with these settings: everything is skipped
    assert capsys.readouterr().out.count("already done") == 11


def test_a_training_directory_made_with_other_settings_is_refused(demo_workdir, tmp_path):
    """`urt-jax sft` into a directory holding checkpoints of another run does not resume from
    them: it stops and names the changed keys."""
    import shutil

    from urt_jax.run_settings import SettingsChanged
    from urt_jax.train.run_sft import run_sft

    out = tmp_path / "sft"
    shutil.copytree(demo_workdir / "runs" / "demo" / "sft", out)
    cfg = load_run_config(DEMO, [*DEMO_SMALL, f"output_dir={demo_workdir / 'runs' / 'demo'}"])
    cfg.train.max_steps = 5
    init = str(demo_workdir / "runs" / "demo" / "init_hf")
    with pytest.raises(SettingsChanged, match=r"train.max_steps: 2 -> 5"):
        run_sft(cfg, str(out), hf_dir=init)


def test_overrides_go_anywhere_on_the_command_line(capsys):
    from urt_jax.cli import parse_args

    args = parse_args(["grpo", "c.yaml", "seed=1", "--model", "m", "grpo.max_steps=3"])
    assert args.model == "m" and args.overrides == ["seed=1", "grpo.max_steps=3"]
    args = parse_args(["score", "in.jsonl", "--config", "c.yaml", "seed=2", "--output", "o"])
    assert args.overrides == ["seed=2"] and args.output == "o"
    for argv in (["convert", "hf-to-orbax", "a", "b", "seed=1"], ["eval", "c.yaml", "--nope"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert "unrecognized arguments" in capsys.readouterr().err

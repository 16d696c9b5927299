"""What real clusters do to runs, repeated on the tiny model: a failed checkpoint save (a full
disk), a corrupt latest checkpoint, a GRPO run killed between its completions and its
checkpoint, a metrics file torn mid-write, and paths a run cannot write to."""

import json
import logging
import os

import orbax.checkpoint as ocp
import pytest

from tests.conftest import DEMO_SMALL, working_directory
from urt_jax.cli import main as cli_main

SFT_SMALL = [
    "data.synthetic.n_train=8",
    "data.synthetic.n_heldout=4",
    "data.batch_size=4",
    "train.max_steps=4",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=5",
    "train.progress=false",
]


def _steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def _checkpoints(out):
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def test_a_failed_save_stops_at_once_and_a_corrupt_checkpoint_is_set_aside(
    tmp_path, monkeypatch, capsys, caplog
):
    """A save that fails (the disk is full) stops training with one message and the saved
    checkpoints intact; a rerun resumes. A checkpoint that cannot be restored is moved aside
    (never deleted) and the run goes on from the one before, saving the later steps again,
    and exports."""
    caplog.set_level(logging.INFO)
    out = str(tmp_path / "sft")
    command = ["sft", "configs/demo.yaml", f"output_dir={out}", *SFT_SMALL]
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with working_directory(tmp_path):
        assert cli_main(command) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "steps [1, 2]" in err
        assert "Traceback" not in err
        assert _checkpoints(out) == ["1", "2"]
        assert _steps(os.path.join(out, "metrics.jsonl")) == [1, 2, 3]
        monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
        # the newest checkpoint is damaged after the fact (a bad disk, a partial copy)
        for root, _, files in os.walk(os.path.join(out, "checkpoints", "2")):
            for name in files:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\0")
        assert cli_main(command) == 0
    assert "2.corrupt" in caplog.text and "resumed from step 1" in caplog.text
    assert _checkpoints(out) == ["1", "2", "2.corrupt", "3", "4"]
    assert _steps(os.path.join(out, "metrics.jsonl")) == [1, 2, 3, 4]
    assert os.path.exists(os.path.join(out, "hf", "model.safetensors"))


def test_resumed_grpo_holds_every_step_once(demo_workdir, tmp_path, caplog):
    """Killed after step 3's completions were written but before its checkpoint, and in the
    middle of a metrics line: the resumed run samples step 3 again, and completions.jsonl and
    metrics.jsonl hold every step once, step 3 as the uninterrupted run wrote it."""
    caplog.set_level(logging.INFO)
    demo = demo_workdir / "runs" / "demo"
    out = str(tmp_path / "grpo")
    command = [
        "grpo",
        "configs/demo.yaml",
        "--model",
        str(demo / "sft" / "hf"),
        f"grpo.data={demo / 'data' / 'heldout.jsonl'}",
        f"output_dir={out}",
        *DEMO_SMALL,
        "grpo.max_steps=3",
        "train.checkpoint_every=2",
    ]
    with working_directory(demo_workdir):
        assert cli_main(command) == 0
        completions = os.path.join(out, "completions.jsonl")
        metrics = os.path.join(out, "metrics.jsonl")
        with open(completions) as f:
            first = f.readlines()
        assert sorted(set(json.loads(r)["step"] for r in first)) == [1, 2, 3]
        os.rename(os.path.join(out, "checkpoints", "3"), str(tmp_path / "step3"))
        with open(metrics, "a") as f:
            f.write('{"step": 4, "loss": 0.1')  # torn by the kill
        assert cli_main(command) == 0
    assert "resumed GRPO from step 2" in caplog.text
    with open(completions) as f:
        again = f.readlines()
    assert again == first
    assert _steps(metrics) == [1, 2, 3]


def test_an_output_dir_that_cannot_be_written_is_a_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with working_directory(tmp_path):
        code = cli_main(["sft", "configs/demo.yaml", f"output_dir={blocker}/run", *SFT_SMALL])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["metrics.jsonl"])
def test_a_torn_line_inside_a_log_is_named(tmp_path, name):
    from urt_jax.atomic import cut_back_jsonl

    path = tmp_path / name
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{name}:2: not a JSON line"):
        cut_back_jsonl(str(path), 3)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert cut_back_jsonl(str(path), 5) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'

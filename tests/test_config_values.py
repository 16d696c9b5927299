"""Every setting is checked against its allowed values when a config loads: a bad value is
refused with its key, the value and what is allowed, before anything runs."""

import os
import subprocess
import sys

import pytest

from urt_jax.config import CHOICES, RANGES, RunConfigError, load_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
SHIPPED = [
    os.path.join(d, f)
    for d in (os.path.join(ROOT, "configs"), os.path.join(ROOT, "configs", "pod"))
    for f in sorted(os.listdir(d))
    if f.endswith(".yaml")
]

BAD = [
    ("train.grad_accum=0", "train.grad_accum=0", ">= 1"),
    ("train.learning_rate=-1e-3", "train.learning_rate=-0.001", "value > 0"),
    ("data.batch_size=0", "data.batch_size=0", ">= 1"),
    ("train.log_every=0", "train.log_every=0", ">= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0", ">= 1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints=0", ">= 1"),
    ("train.nonfinite=ignore", "train.nonfinite='ignore'", "['skip', 'stop']"),
    ("train.max_steps=-5", "train.max_steps=-5", ">= 1"),
    ("train.warmup_ratio=1.0", "train.warmup_ratio=1.0", "value < 1"),
    ("grpo.top_p=0", "grpo.top_p=0.0", "0 < value <= 1"),
    ("grpo.num_generations=1", "grpo.num_generations=1", ">= 2"),
    ("grpo.temperature=0", "grpo.temperature=0.0", "value > 0"),
    ("grpo.aggregation=mean", "grpo.aggregation='mean'", "seq_mean_token_mean"),
    ("data.bucket_lengths=[256,0]", "data.bucket_lengths=[256, 0]", ">= 1"),
    ("data.swap_probability=1.5", "data.swap_probability=1.5", "value <= 1"),
    ("model.remat=some", "model.remat='some'", "'dots'"),
    ("model.dtype=int8", "model.dtype='int8'", "'bfloat16'"),
    ("mesh.fsdp=0", "mesh.fsdp=0", "-1"),
    ("eval.batch_size=0", "eval.batch_size=0", ">= 1"),
]


@pytest.mark.parametrize("override,named,allowed", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_with_their_key(override, named, allowed):
    with pytest.raises(RunConfigError) as e:
        load_run_config(DEMO, [override])
    message = str(e.value)
    assert message.startswith(DEMO) and named in message and allowed in message, message


def test_every_shipped_config_is_within_range():
    for path in SHIPPED:
        load_run_config(path)


def test_the_tables_name_real_settings():
    cfg = load_run_config(DEMO)
    for section, attr in [*RANGES, *CHOICES]:
        node = cfg
        for name in filter(None, section.split(".")):
            node = getattr(node, name)
        assert hasattr(node, attr), (section, attr)


def test_command_line_refuses_a_bad_value_without_a_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "urt_jax.cli", "run", DEMO, "train.grad_accum=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "train.grad_accum=0" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "runs").exists()  # nothing ran

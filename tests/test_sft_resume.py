"""SFT through the CLI in subprocesses: SIGKILL and resume reproduce an uninterrupted run, a
half-written checkpoint is ignored, and two jax.distributed processes match one process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests.processes import hf_params, run_distributed
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    paths = write_synthetic(
        str(out / "data"),
        n_train=24,
        n_heldout=4,
        seed=2,
        cfg=SyntheticConfig(image_size=56, num_frames=4),
    )
    cfg = {
        "seed": 0,
        "model": {"config": os.path.join(ROOT, "configs", "model", "tiny.yaml")},
        "data": {
            "train": paths["train"],
            "templates": os.path.join(ROOT, "configs", "templates", "short.yaml"),
            "max_pixels": 3136,
            "max_frames": 4,
            "max_length": 320,
            "batch_size": 8,
            "bucket_lengths": [320],
        },
        "train": {
            "max_steps": STEPS,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
            "checkpoint_every": 2,
            "keep_checkpoints": 5,
            "progress": False,
        },
        "mesh": {"data": 2, "fsdp": 2, "tensor": 2},
    }
    path = out / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _cmd(config_path, out, *extra):
    return [sys.executable, "-m", "urt_jax.cli", "sft", config_path, f"output_dir={out}", *extra]


def _run(config_path, out, *extra, env=None):
    result = subprocess.run(
        _cmd(config_path, out, *extra), capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def uninterrupted(config_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("a"))
    _run(config_path, out)
    return out


def test_metrics_and_tensorboard_are_written(uninterrupted):
    with open(os.path.join(uninterrupted, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "eta_s"} <= set(row)
    assert rows[-1]["loss"] < rows[0]["loss"]
    events = os.listdir(os.path.join(uninterrupted, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_killed_run_resumes_exactly(config_path, uninterrupted, tmp_path):
    out = str(tmp_path / "b")
    proc = subprocess.Popen(
        _cmd(config_path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).readlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "hf")), "the run finished before it was killed"
    # a checkpoint directory left half-written by a crash must be ignored, with a warning
    junk = os.path.join(out, "checkpoints", "5.orbax-checkpoint-tmp-1700000000")
    os.makedirs(junk, exist_ok=True)
    with open(os.path.join(junk, "partial"), "w") as f:
        f.write("interrupted")
    resumed = _run(config_path, out)
    assert "half-written" in resumed.stderr and "5.orbax-checkpoint-tmp" in resumed.stderr
    assert "resumed from step" in resumed.stderr
    want, got = _losses(uninterrupted), _losses(out)
    assert len(got) == STEPS
    np.testing.assert_array_equal(got, want)
    a, b = hf_params(uninterrupted), hf_params(out)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_two_processes_match_one(config_path, uninterrupted, tmp_path):
    run_distributed(_cmd(config_path, str(tmp_path / "dist")), processes=2, devices=4)
    got = _losses(str(tmp_path / "dist"))  # written by process 0
    assert len(got) == STEPS
    np.testing.assert_allclose(got, _losses(uninterrupted), rtol=1e-5)
    # the exported model: every tensor gathered from both processes' shards
    exported, want = hf_params(str(tmp_path / "dist")), hf_params(uninterrupted)
    assert exported.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_allclose(exported[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_sigterm_stops_after_a_checkpoint_and_resumes_from_that_step(
    config_path, uninterrupted, tmp_path
):
    """SIGTERM (a preempted VM, a scheduler) mid-run: the step in progress finishes, is
    checkpointed (checkpoint_every is 2: whatever step it is), the metrics are flushed and the
    process exits 75; the rerun resumes from that very step and ends as the uninterrupted run."""
    out = str(tmp_path / "c")
    proc = subprocess.Popen(_cmd(config_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).readlines()) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    err = err.decode()
    assert proc.returncode == 75, err[-3000:]
    stopped = len(_losses(out))
    assert 1 <= stopped < STEPS
    assert f"stopped by SIGTERM after step {stopped}" in err and "Traceback" not in err
    assert str(stopped) in os.listdir(os.path.join(out, "checkpoints"))
    resumed = _run(config_path, out)
    assert f"resumed from step {stopped}" in resumed.stderr
    np.testing.assert_array_equal(_losses(out), _losses(uninterrupted))

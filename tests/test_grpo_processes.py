"""`urt-jax grpo` on two jax.distributed processes (4 CPU devices each) matches one process with
8 devices: the same completions, rewards and losses, and the same exported policy."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import save_pretrained
from urt_jax.model.safetensors_io import SafetensorsCheckpoint
from urt_jax.sharding.init import init_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_processes")
    paths = write_synthetic(
        str(out / "data"), n_train=4, n_heldout=1, seed=5, cfg=SyntheticConfig(image_size=56)
    )
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    save_pretrained(init_model(config, seed=0), str(out / "policy"))
    cfg = {
        "seed": 0,
        "model": {"hf_dir": str(out / "policy")},
        "data": {
            "templates": os.path.join(ROOT, "configs", "templates", "short.yaml"),
            "max_pixels": 3136,
            "max_frames": 4,
        },
        "train": {"checkpoint_every": 100, "progress": False},
        "grpo": {
            "data": paths["train"],
            "max_steps": STEPS,
            "prompts_per_step": 2,
            "num_generations": 4,
            "micro_batch_rows": 4,
            "max_new_tokens": 6,
            "top_p": 1.0,
            "learning_rate": 1e-3,
        },
        "mesh": {"data": 1, "fsdp": 4, "tensor": 2},
    }
    path = out / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _launch(config_path, out, devices, *extra):
    cmd = [sys.executable, "-m", "urt_jax.cli", "grpo", config_path, f"output_dir={out}", *extra]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _finish(procs):
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]


def _read(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    with open(os.path.join(out, "completions.jsonl")) as f:
        completions = [json.loads(line) for line in f]
    with SafetensorsCheckpoint.open(os.path.join(out, "hf")) as ckpt:
        params = {k: np.array(ckpt.get(k)) for k in ckpt.keys()}
    return metrics, completions, params


def test_two_processes_match_one(config_path, tmp_path):
    _finish([_launch(config_path, str(tmp_path / "one"), 8)])
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    dist = [
        _launch(
            config_path,
            str(tmp_path / "two"),
            4,
            "mesh.distributed=true",
            f"mesh.coordinator_address=localhost:{port}",
            "mesh.num_processes=2",
            f"mesh.process_id={pid}",
        )
        for pid in range(2)
    ]
    _finish(dist)
    (m1, c1, p1), (m2, c2, p2) = _read(str(tmp_path / "one")), _read(str(tmp_path / "two"))
    assert len(m1) == len(m2) == STEPS and len(c2) == STEPS * 8  # written once, by process 0
    assert [c["completion"] for c in c2] == [c["completion"] for c in c1]
    for key in ("reward", "loss", "grad_norm", "kl"):
        np.testing.assert_allclose([m[key] for m in m2], [m[key] for m in m1], rtol=1e-4, atol=1e-7)
    assert p2.keys() == p1.keys()
    for key, value in p1.items():
        np.testing.assert_allclose(p2[key], value, rtol=1e-4, atol=1e-6, err_msg=key)

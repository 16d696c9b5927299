"""Stages on two jax.distributed processes (4 CPU devices each) against one process with 8
devices: `urt-jax grpo` gives the same completions, rewards, losses and exported policy, and
`urt-jax sample` (rejection sampling on the mesh) writes the same files, once."""

import json
import os
import sys

import numpy as np
import pytest
import yaml

from tests.processes import hf_params, run_distributed, run_together
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import save_pretrained
from urt_jax.resources import DEMO_TOKENIZER_DIR
from urt_jax.sharding.init import init_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_processes")
    paths = write_synthetic(
        str(out / "data"), n_train=8, n_heldout=1, seed=5, cfg=SyntheticConfig(image_size=56)
    )
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    save_pretrained(init_model(config, seed=0), str(out / "policy"), source_dir=DEMO_TOKENIZER_DIR)
    cfg = {
        "seed": 0,
        "model": {"hf_dir": str(out / "policy")},
        "data": {
            "train": paths["train"],
            "templates": os.path.join(ROOT, "configs", "templates", "short.yaml"),
            "max_pixels": 3136,
            "max_frames": 4,
        },
        "train": {"checkpoint_every": 100, "progress": False},
        "rejection": {"samples_per_prompt": 2, "max_new_tokens": 6, "batch_size": 8},
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


def _cli(stage, config_path, out):
    return [sys.executable, "-m", "urt_jax.cli", stage, config_path, f"output_dir={out}"]


def _read(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    with open(os.path.join(out, "completions.jsonl")) as f:
        completions = [json.loads(line) for line in f]
    return metrics, completions, hf_params(out)


def test_grpo_on_two_processes_matches_one(config_path, tmp_path):
    run_together([_cli("grpo", config_path, str(tmp_path / "one"))], devices=8)
    run_distributed(_cli("grpo", config_path, str(tmp_path / "two")), processes=2, devices=4)
    (m1, c1, p1), (m2, c2, p2) = _read(str(tmp_path / "one")), _read(str(tmp_path / "two"))
    assert len(m1) == len(m2) == STEPS and len(c2) == STEPS * 8  # written once, by process 0
    assert [c["completion"] for c in c2] == [c["completion"] for c in c1]
    for key in ("reward", "loss", "grad_norm", "kl"):
        np.testing.assert_allclose([m[key] for m in m2], [m[key] for m in m1], rtol=1e-4, atol=1e-7)
    assert p2.keys() == p1.keys()
    for key, value in p1.items():
        np.testing.assert_allclose(p2[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_rejection_sampling_on_two_processes_matches_one(config_path, tmp_path):
    """Chunks of 8 prompts on the (fsdp 4, tensor 2) mesh, split over fsdp: the files process 0
    writes equal those of one process with 8 devices, and nothing else is left there."""
    for processes in (1, 2):
        out = str(tmp_path / str(processes))
        run_distributed(_cli("sample", config_path, out), processes, devices=8 // processes)
    files = ("sft.jsonl", "grpo.jsonl", "stats.json")
    got = [
        [(tmp_path / str(n) / "rejection_sampling" / f).read_text() for f in files] for n in (1, 2)
    ]
    assert got[0] == got[1]
    stats = json.loads(got[1][2])
    assert stats["samples"] == 16
    written = sorted(os.listdir(tmp_path / "2" / "rejection_sampling"))
    assert written == sorted([*files, "sft.yaml", "grpo.yaml"])

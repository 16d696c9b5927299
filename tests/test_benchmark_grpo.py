"""The GRPO measurement of the benchmark harness (benchmarks/run.py --only grpo) end to end at the
tiny shape: urt_jax's GRPO step against TRL's GRPOTrainer, both sides doing the same work."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("trl")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_bench")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--out", str(out)]
    cmd += ["--quick", "--only", "grpo", "--rounds", "1", "--rewarm", "0", "--pause", "0"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.json") as f:
        res = json.load(f)
    return res, (out / "results.md").read_text()


def test_grpo_speedup_is_reported(results):
    res, _ = results
    assert res["metrics"]["grpo_step_speedup_vs_trl"] > 0
    assert res["goals"]["grpo_step_speedup_vs_trl"] == [">=", 3.0]


def test_both_sides_do_the_same_work(results):
    res, _ = results
    g = res["grpo"]
    s = g["settings"]
    tokens = s["prompts"] * s["num_generations"] * s["max_new_tokens"]
    assert g["urt_jax"]["completion_tokens"] == g["trl"]["completion_tokens"] == [tokens]
    assert g["urt_jax"]["trainable_params"] == g["trl"]["trainable_params"]
    assert g["urt_jax"]["trainable_params"] == res["params"]["text"]  # the vision tower frozen
    assert g["urt_jax"]["info"]["prompt_digest"] == g["trl"]["info"]["prompt_digest"]
    assert all(g["same_work"].values())


def test_phases_and_memory_per_side(results):
    res, md = results
    g = res["grpo"]
    for side in ("urt_jax", "trl"):
        phases = g[side]["phases_s"]
        assert "generation" in phases and "ref log-probs" in phases
        assert sum(phases.values()) <= 1.05 * max(g[side]["times_s"])
        assert g[side]["peak_rss_mib"] > 0
    assert "## GRPO step against TRL's GRPOTrainer" in md
    assert "GRPO step (rollout + update" in md

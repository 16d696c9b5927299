"""`urt-jax run` on the embedded demo config: runs, writes a report, resumes."""

import json
import os

import pytest

from urt_jax.cli import main as cli_main
from urt_jax.config import RunConfigError, load_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")


def test_demo_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["run", DEMO, f"output_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages_done"] == ["init", "forward", "export"]
    assert report["forward"]["logits_finite"]
    assert report["export"]["reload_max_abs_diff"] == {"hf": 0.0, "orbax": 0.0}
    assert (out / "hf" / "config.json").exists()
    capsys.readouterr()
    assert cli_main(["run", DEMO, f"output_dir={out}"]) == 0
    assert capsys.readouterr().out.count("already done") == 3


def test_config_typos_are_errors(tmp_path):
    with pytest.raises(RunConfigError, match=r"unknown key\(s\) \['sed'\]"):
        load_run_config(DEMO, ["sed=1"])
    with pytest.raises(RunConfigError, match=r"model.*unknown key\(s\) \['dtpye'\]"):
        load_run_config(DEMO, ["model.dtpye=bfloat16"])
    with pytest.raises(RunConfigError, match=r"seed: expected int"):
        load_run_config(DEMO, ["seed=abc"])
    assert cli_main(["run", DEMO, f"output_dir={tmp_path}", "stages=[train]"]) == 2

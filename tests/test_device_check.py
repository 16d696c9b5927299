"""The device check (benchmarks/device.py) runs end to end on the CPU at tiny shapes: the same
code a GPU or TPU host runs, with the TPU kernels interpreted."""

import json

from benchmarks import device


def test_device_check_dry_run_writes_every_section(tmp_path):
    result = device.main(["--out", str(tmp_path), "--dry-run"])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["versions"]["backend"] == "cpu" and written["dry_run"]
    assert [p["kernels"] for p in written["parity"]] == ["tpu", "gpu"]
    for check in written["parity"]:
        assert check["float32"]["ok"], check
        assert 0 < check["float32"]["max_abs_diff"] < check["bfloat16"]["max_abs_diff"]
    for timing in written["attention"]:
        assert timing["max_abs_diff"] < 0.1  # bf16 outputs of unit-variance values
        assert timing["forward_backward_speedup"] > 0
    assert written["sft"]["tokens_per_s"] > 0 and written["sampling"]["tokens_per_s"] > 0
    assert written["sft"]["model_tflops_per_step"] > 0
    assert "mfu" not in written["sft"]  # no published peak for a CPU
    assert result == written

"""From the compiled 7B numbers to a verdict: per-chip peak memory against v5p HBM, and step
times at a stated MFU of the v5p bf16 peak (see plan_7b.py)."""

from __future__ import annotations

from benchmarks.flops import step_flops
from benchmarks.plan_shapes import IMAGES_PER_ROW, image_grid

GIB = 1024**3


V5P = {"hbm_gib_per_chip": 95.0, "bf16_tflops_per_chip": 459.0, "v5p-8_chips": 4}
# Where each mesh runs: JAX sees a v5p chip (2 TensorCores, megacore) as one device, so a v5p-8
# slice (4 chips, 8 TensorCores) is a 4-device mesh; the 8-device meshes are a v5p-16 slice.
TARGET = {"fsdp8": ("v5p-16", 8), "fsdp4_tp2": ("v5p-16", 8), "fsdp4": ("v5p-8", 4)}


def _peaks(entry: dict, temp: float, inputs: float, reference: bool, accumulator: bool) -> float:
    """Per-device peak bytes: resident state (with GRPO's reference copy and the gradient
    accumulator of micro-batching where present) + the batch + the program's temporaries."""
    r = entry["resident"]
    base = r["params_bytes"] + r["opt_state_bytes"] + r["frozen_bytes"]
    base += r["params_bytes"] * reference + r["grad_bytes"] * accumulator
    return base + inputs + temp


def estimate(name: str, entry: dict, config, run, grpo_run, cases: dict, mfu: float) -> dict:
    """Per-chip peak memory on the slice the mesh maps to, and step times on v5p-8 at ``mfu`` of
    its bf16 peak."""
    x = entry["full_depth"]
    slice_name, chips = TARGET.get(name, ("?", entry["devices"]))
    grids = [image_grid(config, run.data)] * IMAGES_PER_ROW
    rate = V5P["v5p-8_chips"] * V5P["bf16_tflops_per_chip"] * 1e12 * mfu  # step times: v5p-8
    hbm = V5P["hbm_gib_per_chip"]
    out: dict = {"slice": slice_name, "chips": chips}
    rows_per_step = run.data.batch_size * run.train.grad_accum
    applying = _peaks(entry, x["sft"]["apply"]["temp_bytes"], 0, False, True)
    for case, (rows, length) in cases.items():
        c = x["sft"][case]
        peak = max(_peaks(entry, c["temp_bytes"], c["input_bytes"], False, True), applying) / GIB
        targets = length - length // 2
        flops = step_flops(
            config, length, rows_per_step * length, rows_per_step * targets,
            grids * rows_per_step, True,
        )  # fmt: skip
        out[case] = {
            "rows_per_device": rows // entry["batch_ways"],
            "peak_gib_per_chip": peak,
            "fits": peak <= hbm,
            "compiled_flops_all_devices": c["flops"] * entry["devices"],
            "model_flops_micro_batch": step_flops(
                config, length, rows * length, rows * targets, grids * rows, True
            ),
            "optimizer_step_rows": rows_per_step,
            "optimizer_step_model_flops": flops,
            "optimizer_step_s_v5p8": flops / rate,
        }
    if "grpo" in x:
        gx, g = x["grpo"], grpo_run.grpo
        rows, p, n = g.prompts_per_step * g.num_generations, gx["prompt_length"], gx["new_tokens"]
        ref, upd = gx["ref_logprobs"], gx["update"]
        split = "apply" in gx  # micro-batches: a gradient accumulator, AdamW on its own
        temps = [ref["temp_bytes"], upd["temp_bytes"]] + [gx["apply"]["temp_bytes"]] * split
        peak = _peaks(entry, max(temps), gx["input_bytes"], True, split)
        t = int(p + n)
        flops = step_flops(config, t, rows * t, rows * n, grids * rows, False) + step_flops(
            config, t, rows * t, rows * n, grids * rows, True
        )
        size = gx["micro_batch_rows"]
        micro_batches = rows // size
        sampling = gx.get("sampling")
        if sampling is not None:  # the policy's state and the reference resident, no batch
            out["grpo_sampling"] = {
                "rows": rows,
                "prompts": sampling["prompts"],
                "temp_gib_per_chip": sampling["temp_bytes"] / GIB,
                "argument_gib_per_chip": sampling["argument_bytes"] / GIB,
                "peak_gib_per_chip": _peaks(entry, sampling["temp_bytes"], 0, True, False) / GIB,
            }
            out["grpo_sampling"]["fits"] = out["grpo_sampling"]["peak_gib_per_chip"] <= hbm
        out["grpo"] = {
            "rows_per_device": size // entry["batch_ways"],
            "micro_batches": micro_batches,
            "peak_gib_per_chip": peak / GIB,
            "fits": peak / GIB <= hbm,
            "compiled_flops_all_devices": entry["devices"]
            * (ref["flops"] + upd["flops"])
            * micro_batches,
            "model_flops": flops,
            "ref_and_update_s_v5p8": flops / rate,
        }
    return out

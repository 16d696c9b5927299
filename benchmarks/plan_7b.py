"""The 7B plan on paper: the sharded SFT and GRPO steps of Qwen2.5-VL-7B lowered and compiled
ahead of time with abstract arrays on a CPU mesh of fake devices, reporting per-device memory
(``memory_analysis``) and FLOPs (``cost_analysis``).

    python benchmarks/plan_7b.py --out plan.json [--meshes ...] [--quick]

Nothing is allocated: parameters, optimiser state and batches are ``jax.ShapeDtypeStruct`` with
the shardings of the project's rules table. The model is built for TPU (``kernels="tpu"``): the
layout workarounds for XLA:CPU are left out and the decoder layers run as a rolled scan, as on a
pod. Attention is splash attention, which cannot be lowered for the TPU here: the memory programs
trace a stand-in with splash's own inputs, outputs and saved residuals (``plan_attention``: the
formula is there), so their temporaries hold what the kernel keeps in HBM and nothing of an
interpreter's. The model and run settings come from configs/model/qwen2_5_vl_7b.yaml and
configs/pod/qwen2_5_vl_7b_cold_start.yaml (SFT) and configs/pod/qwen2_5_vl_7b_grpo.yaml (GRPO:
the sampler's program for one generation batch, the reference log-probs and the update).
Memory is that of the full model compiled as it runs. ``cost_analysis`` counts a loop's body once,
so FLOPs come from programs with the real kernel compiled with 1 and 2 decoder layers unrolled,
extrapolated linearly to the full depth. Parameter, optimiser and gradient bytes are exact
(counted from the full model's shard shapes).
"""

from __future__ import annotations

import os
import sys

# 8 fake CPU devices. XLA:CPU expands optimisation barriers before CSE (cse_barrier_expander),
# which merges every rematerialised recomputation back into the forward pass: remat would then
# change neither memory nor FLOPs. Disabling that pass keeps remat as TPU/GPU compile it (the
# program is only compiled here, never run).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_disable_hlo_passes" not in _flags:
    _flags += " --xla_disable_hlo_passes=cse_barrier_expander"
os.environ["XLA_FLAGS"] = _flags.strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.flops import FORMULA  # noqa: E402
from benchmarks.plan_attention import splash_memory_model  # noqa: E402
from benchmarks.plan_estimate import V5P, estimate  # noqa: E402
from benchmarks.plan_shapes import (  # noqa: E402
    IMAGES_PER_ROW,
    MESHES,
    grpo_micro_batch,
    image_grid,
    reduced_config,
    sampling_prompts,
    sft_batch,
)
from urt_jax.config import load_run_config  # noqa: E402
from urt_jax.generate.sampler import lower_sample  # noqa: E402
from urt_jax.model.config import Qwen25VLConfig  # noqa: E402
from urt_jax.sharding.init import abstract_model  # noqa: E402
from urt_jax.sharding.mesh import MeshConfig, batch_ways, make_mesh  # noqa: E402
from urt_jax.train.core import trainable_filter  # noqa: E402
from urt_jax.train.grpo import GRPOTrainer  # noqa: E402
from urt_jax.train.optim import init_train_state, make_optimizer  # noqa: E402
from urt_jax.train.sft import SFTTrainer, shard_batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024**3


def nbytes(tree) -> int:
    """Bytes of a pytree of sharded ShapeDtypeStructs on one device (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
    return total


def analyse(lowered) -> dict:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "compile_s": round(seconds, 1),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "flops": float(cost.get("flops", 0.0)),
    }


def planned_model(config, run, mesh, unroll: int | None):
    """The abstract model, its decoder layers scanned ``unroll`` at a time (None: as it runs)."""
    model = abstract_model(config, mesh, run.model.dtype, run.model.remat, kernels="tpu")
    model.language_model.scan_unroll = unroll
    return model


def compile_sft(config, run, mesh, cases, unroll: int | None = None) -> dict:
    """The project's SFTTrainer jits (accumulate = forward + backward of one micro-batch,
    apply = clip + AdamW), built by its own constructor on an abstract model."""
    model = planned_model(config, run, mesh, unroll)
    trainer = SFTTrainer(model, mesh, run.train, run.train.max_steps, run.seed)
    params, frozen = trainer.state["params"], trainer.frozen
    acc = trainer.abstract_accumulator()
    out = {"apply": analyse(trainer._apply.lower(trainer.state, *acc))}
    for name, (rows, length) in cases.items():
        placed = shard_batch(mesh, sft_batch(config, rows, length, run.data))
        batch = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), placed
        )
        del placed
        out[name] = analyse(trainer._accumulate.lower(acc, params, frozen, *batch))
        out[name]["input_bytes"] = nbytes(batch)
    return out


def compile_sampling(config, model, run, mesh) -> dict:
    """The sampler's program for one generation batch of ``run.grpo`` (prompts_per_step
    prompts x G, every completion ``max_new_tokens`` long: no end token), compiled as
    ``urt_jax.generate.sample`` runs it on the model's mesh."""
    g = run.grpo
    batch = sampling_prompts(config, g.prompts_per_step, run.data)
    options = dict(
        num_samples=g.num_generations,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        eos_token_ids=[],
    )
    out = analyse(lower_sample(model, batch, **options))
    out["prompts"] = g.prompts_per_step
    return out


def compile_grpo(config, run, mesh, unroll: int | None = None, sampling: bool = False) -> dict:
    """GRPOTrainer's jits, built by its own constructor on an abstract model: reference
    log-probs (forward) and the update of one micro-batch (forward, backward, and AdamW when the
    micro-batch is the whole generation batch; else the gradient accumulation, with AdamW in a
    separate ``apply``); with ``sampling``, the sampler's program too."""
    g = run.grpo
    model = planned_model(config, run, mesh, unroll)
    trainer = GRPOTrainer(model, mesh, run.train, g, run.seed)
    params, frozen = trainer.state["params"], trainer.frozen
    micro, p, n = grpo_micro_batch(config, mesh, g, run.data)
    rows, size = g.prompts_per_step * g.num_generations, micro.mask.shape[0]
    ref = micro.mask  # the reference log-probs: [rows, N] float32 like the mask
    out = {"ref_logprobs": analyse(trainer._logprobs.lower(params, frozen, micro.inputs, p))}
    if sampling:  # the policy the trainer samples from, abstract like its state
        out["sampling"] = compile_sampling(config, trainer.model(), run, mesh)
    if size == rows:
        out["update"] = analyse(
            trainer._update.lower(trainer.state, frozen, micro, None, ref, prompt_length=p)
        )
    else:
        acc = trainer.abstract_accumulator()
        out["update"] = analyse(
            trainer._accumulate.lower(acc, params, frozen, micro, None, ref, prompt_length=p)
        )
        out["apply"] = analyse(trainer._apply.lower(trainer.state, *acc))
    return {
        **out,
        # every micro-batch of the generation batch is placed on the mesh before the update,
        # with its reference log-probs
        "input_bytes": nbytes((micro, ref)) * (rows // size),
        "rows": rows,
        "micro_batch_rows": size,
        "prompt_length": p,
        "new_tokens": n,
    }


def resident_bytes(config, run, mesh) -> dict:
    """Exact per-device bytes of the full model's parameters, optimiser state and gradients."""
    model = abstract_model(config, mesh, run.model.dtype, run.model.remat, kernels="tpu")
    _, params, frozen = nnx.split(model, trainable_filter(run.train.freeze_vision), ...)
    tx = make_optimizer(run.train, run.train.max_steps)
    opt = init_train_state(params, tx, mesh, run.seed)["opt_state"]
    p = nbytes(params)
    return {
        "trainable_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
        "frozen_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(frozen))),
        "params_bytes": p,
        "frozen_bytes": nbytes(frozen),
        "opt_state_bytes": nbytes(opt),
        "grad_bytes": p,  # fp32 gradient accumulator (SFT); GRPO's reference copy is the same
    }


def programs(
    config, run, grpo_run, mesh, cases, grpo: bool, unroll: int | None, sampling: bool = False
) -> dict:
    out = {"sft": compile_sft(config, run, mesh, cases, unroll)}
    if grpo:
        out["grpo"] = compile_grpo(config, grpo_run, mesh, unroll, sampling)
    return out


def memory_programs(config, run, grpo_run, mesh, cases, grpo: bool) -> dict:
    """The full model's programs as they run, splash attention's buffers counted from its block
    sizes (``plan_attention``)."""
    with splash_memory_model():
        return programs(config, run, grpo_run, mesh, cases, grpo, None, sampling=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        *head, last = k.split(".")
        d = out
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=os.path.join(ROOT, "configs/model/qwen2_5_vl_7b.yaml"))
    ap.add_argument(
        "--run", default=os.path.join(ROOT, "configs/pod/qwen2_5_vl_7b_cold_start.yaml")
    )
    ap.add_argument("--grpo-run", default=os.path.join(ROOT, "configs/pod/qwen2_5_vl_7b_grpo.yaml"))
    ap.add_argument("--meshes", default=",".join(MESHES))
    ap.add_argument("--sft-cases", default="32x2048,32x13312,8x13312", help="rows x tokens")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed MFU on v5p for step times")
    ap.add_argument("--no-grpo", action="store_true")
    ap.add_argument(
        "--quick", action="store_true", help="validation: small cases, one mesh, 8 vision blocks"
    )
    args = ap.parse_args()

    config = Qwen25VLConfig.from_yaml(args.model)
    run = load_run_config(args.run, ["data.train=unused"])
    grpo_run = load_run_config(args.grpo_run)
    if args.quick:
        args.sft_cases, args.meshes = "8x2048", args.meshes.split(",")[0]
        config = reduced_config(config, config.text.num_hidden_layers, 8)
        small = dict(prompts_per_step=4, num_generations=4, max_new_tokens=256, micro_batch_rows=8)
        grpo_run = dataclasses.replace(grpo_run, grpo=dataclasses.replace(grpo_run.grpo, **small))
    g = grpo_run.grpo
    cases = {}
    for c in args.sft_cases.split(","):
        rows, length = (int(v) for v in c.split("x"))
        cases[f"sft_{rows}x{length}"] = (rows, length)
    layers = config.text.num_hidden_layers
    result: dict = {
        "devices": jax.device_count(),
        "model": os.path.relpath(args.model, ROOT),
        "run": os.path.relpath(args.run, ROOT),
        "dtype": run.model.dtype,
        "remat": run.model.remat,
        "micro_batch_rows": run.data.batch_size,
        "grad_accum": run.train.grad_accum,
        "image_grid_per_image": list(image_grid(config, run.data)),
        "images_per_row": IMAGES_PER_ROW,
        "full_depth": [layers, config.vision.depth],
        "flops_points": [1, 2],
        "sft_cases": {k: list(v) for k, v in cases.items()},
        "grpo_run": os.path.relpath(args.grpo_run, ROOT),
        "grpo_case": {
            "prompts_per_step": g.prompts_per_step,
            "num_generations": g.num_generations,
            "max_new_tokens": g.max_new_tokens,
            "micro_batch_rows": g.micro_batch_rows,
            "dtype": grpo_run.model.dtype,
            "remat": grpo_run.model.remat,
        },
        "v5p": V5P,
        "mfu_assumed": args.mfu,
        "flops_formula": FORMULA,
        "meshes": {},
    }
    grpo = not args.no_grpo
    for mesh_name in args.meshes.split(","):
        fsdp, tensor = MESHES[mesh_name]
        mesh = make_mesh(MeshConfig(data=1, fsdp=fsdp, tensor=tensor))
        entry: dict = {
            "shape": dict(mesh.shape),
            "devices": int(mesh.size),
            "batch_ways": batch_ways(mesh),
        }
        entry["resident"] = resident_bytes(config, run, mesh)
        t0 = time.perf_counter()
        full = memory_programs(config, run, grpo_run, mesh, cases, grpo)  # as it runs: memory
        points = [  # 1 and 2 decoder layers unrolled: FLOPs per layer
            flatten(programs(reduced_config(config, n, config.vision.depth), run, grpo_run, mesh,
                             cases, grpo, n))
            for n in (1, 2)
        ]  # fmt: skip
        flat = flatten(full)
        per_layer = {}
        for key in flat:
            if key.endswith(".flops") and key in points[0]:  # not the sampler's: memory only
                per_layer[key] = points[1][key] - points[0][key]
                flat[key] = points[0][key] + (layers - 1) * per_layer[key]
        entry["full_depth"] = unflatten(flat)
        entry["flops_per_decoder_layer"] = per_layer
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[plan] {mesh_name}: {entry['seconds']}s", file=sys.stderr)
        entry["estimate"] = estimate(mesh_name, entry, config, run, grpo_run, cases, args.mfu)
        result["meshes"][mesh_name] = entry
        with open(args.out, "w") as f:  # partial results survive a later failure
            json.dump(result, f, indent=2)
    print(f"[plan] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The device check: what a GPU or TPU host does with urt_jax's accelerator kernels.

    python benchmarks/device.py --out DIR            # on one GPU or TPU host, under 10 minutes
    python benchmarks/device.py --out DIR --dry-run  # the same code on the CPU, tiny shapes

Writes DIR/results.json (and prints it):

- ``versions``: jax, jaxlib, the backend, the device kind and count;
- ``parity``: logits of the model built for this backend's kernels (``model.kernels``: splash
  attention on TPU, cuDNN / XLA attention on GPU) against the CPU reference (``kernels="cpu"``
  on the host's CPU) with the same random weights, on Qwen2.5-VL-3B's widths cut to 2 decoder
  layers and 2 vision blocks, a batch of a left-padded and a full row, each with an image: fp32
  at the highest matmul precision (max |diff|, bound 1e-3) and bf16 (reported);
- ``attention``: forward, and forward + backward, of one decoder layer's causal GQA attention
  at the 3B's heads (16 query, 2 KV, dim 128) in bf16, the backend's kernel against the XLA
  formula (scores, mask, fp32 softmax, values: what XLA compiles without a kernel), median
  seconds and the ratio;
- ``sft`` and ``sampling``: an SFT step (mixed bf16, full remat, AdamW, vision frozen) and a
  sampling call (G completions per prompt, every one ``--new-tokens`` long) of the 3B's widths
  with ``--layers`` decoder layers, on a mesh of the local devices (fsdp): tokens per second,
  and for the SFT step the model FLOPs (``benchmarks/flops.py``) against the chips' published
  bf16 peak (MFU).

``--dry-run`` runs every section on the CPU at the tiny config's shapes, with the TPU kernels in
Pallas' interpret mode and the GPU path's XLA formula (tests/test_device_check.py).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.flops import step_flops  # noqa: E402
from benchmarks.plan_shapes import image_grid, reduced_config, sampling_prompts  # noqa: E402
from benchmarks.timing import median_seconds  # noqa: E402
from urt_jax.config import DataSection, TrainSection  # noqa: E402
from urt_jax.generate.sampler import sample  # noqa: E402
from urt_jax.model.attention import causal_attention, resolve_kernels  # noqa: E402
from urt_jax.model.config import Qwen25VLConfig  # noqa: E402
from urt_jax.model.inputs import prepare_inputs  # noqa: E402
from urt_jax.model.layers import masked_softmax_attention  # noqa: E402
from urt_jax.sharding.init import init_model  # noqa: E402
from urt_jax.sharding.mesh import MeshConfig, make_mesh  # noqa: E402
from urt_jax.train.sft import SFTTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Published dense bf16 peaks per device as JAX counts devices (a v4/v5p chip is one device),
# TFLOP/s, matched against jax's device_kind.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; the PCIe card's is 756
    "A100": 312.0,
    "L4": 121.0,
    "TPU v6 lite": 918.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5": 459.0,
    "TPU v4": 275.0,
}
PARITY_BOUND = 1e-3  # fp32 logits, highest matmul precision, 3B widths


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section runs at."""

    config: str  # a model config YAML under configs/model
    parity_image: int  # image side, pixels
    attention: tuple[int, int]  # rows, tokens
    sft: tuple[int, int]  # rows, tokens
    prompts: int
    samples: int
    new_tokens: int
    repeats: int
    max_pixels: int  # of the SFT and sampling rows' two images each


FULL = Sizes("qwen2_5_vl_3b.yaml", 224, (4, 4096), (8, 2048), 4, 8, 256, 5, 147456)
DRY = Sizes("tiny.yaml", 56, (2, 256), (2, 256), 2, 2, 8, 2, 12544)


def versions() -> dict:
    import jaxlib

    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }


def peak_tflops(kind: str) -> float | None:
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


# ------------------------------------------------------------------------------- parity
def parity_batch(config: Qwen25VLConfig, side: int, seed: int = 0) -> dict:
    """Two rows, each with an image of ``side`` x ``side`` pixels between text; the second row
    shorter, left-padded."""
    rng = np.random.default_rng(seed)
    v = config.vision
    grid = (1, side // v.patch_size, side // v.patch_size)
    n_img = int(np.prod(grid)) // v.merge_unit
    image = [config.vision_start_token_id] + [config.image_token_id] * n_img
    image += [config.vision_end_token_id]
    rows = [list(rng.integers(0, 1000, 12)) + image + list(rng.integers(0, 1000, 20))]
    rows.append(list(rng.integers(0, 1000, 4)) + image + list(rng.integers(0, 1000, 8)))
    length = max(len(r) for r in rows)
    ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    patches = int(np.prod(grid)) * 2
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": rng.standard_normal((patches, v.patch_dim)).astype(np.float32),
        "image_grid_thw": np.asarray([grid, grid], np.int64),
    }


def parity(config: Qwen25VLConfig, kernels: str, side: int) -> dict:
    """Max |logit difference| at valid positions between ``kernels`` on the default device and
    the CPU reference, fp32 (highest matmul precision) and bf16, same weights."""
    batch = parity_batch(config, side)
    inputs, _ = prepare_inputs(config, **batch)
    valid = batch["attention_mask"].astype(bool)
    cpu = jax.devices("cpu")[0]
    out = {"kernels": kernels}
    for dtype in ("float32", "bfloat16"):
        with jax.default_device(cpu):
            reference = init_model(config, dtype=dtype, seed=0, kernels="cpu")
            with jax.default_matmul_precision("highest"):
                want = np.asarray(jax.jit(_forward)(*nnx.split(reference), inputs), np.float32)
            state = jax.device_get(nnx.state(reference))
        model = nnx.merge(nnx.graphdef(init_model(config, dtype=dtype, kernels=kernels)), state)
        with jax.default_matmul_precision("highest"):
            got = np.asarray(jax.jit(_forward)(*nnx.split(model), inputs), np.float32)
        diff = float(np.abs(got - want)[valid].max())
        out[dtype] = {"max_abs_diff": diff, "logit_scale": float(np.abs(want[valid]).max())}
    out["float32"]["bound"] = PARITY_BOUND
    out["float32"]["ok"] = out["float32"]["max_abs_diff"] <= PARITY_BOUND
    return out


def _forward(graphdef, state, inputs):
    return nnx.merge(graphdef, state).forward(jax.tree.map(jnp.asarray, inputs))


# ---------------------------------------------------------------------------- attention
def reference_attention(q, k, v, valid, scale):
    """The XLA formula: [B, H, T, T] scores, causal and padding mask, fp32 softmax."""
    t, groups = q.shape[1], q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & valid[:, None, None, :]
    return masked_softmax_attention(q, k, v, mask, scale, "bqhd,bkhd->bhqk")


def attention(config: Qwen25VLConfig, kernels: str, rows: int, length: int, repeats: int) -> dict:
    t = config.text
    h, kv, d = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (rows, length, h, d), jnp.bfloat16)
    k = jax.random.normal(keys[1], (rows, length, kv, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (rows, length, kv, d), jnp.bfloat16)
    valid = jnp.arange(length)[None] >= jnp.arange(rows)[:, None] * (length // 8)  # left pads
    scale = d**-0.5
    impls = {
        kernels: lambda q, k, v: causal_attention(q, k, v, valid, scale, kernels),
        "xla_reference": lambda q, k, v: reference_attention(q, k, v, valid, scale),
    }
    out: dict = {"shape": [rows, length, h, kv, d], "dtype": "bfloat16"}
    results = {}
    for name, fn in impls.items():
        forward = jax.jit(fn)
        loss = jax.jit(
            jax.grad(lambda q, k, v, f=fn: f(q, k, v).astype(jnp.float32).sum(), (0, 1, 2))
        )
        results[name] = np.asarray(forward(q, k, v), np.float32)
        out[name] = {
            "forward_s": median_seconds(lambda f=forward: f(q, k, v), repeats),
            "forward_backward_s": median_seconds(lambda f=loss: f(q, k, v), repeats),
        }
    mask = np.asarray(valid)
    out["max_abs_diff"] = float(np.abs(results[kernels] - results["xla_reference"])[mask].max())
    for key in ("forward_s", "forward_backward_s"):
        out[f"{key[:-2]}_speedup"] = out["xla_reference"][key] / out[kernels][key]
    return out


# ------------------------------------------------------------------------ SFT, sampling
def training_model(config: Qwen25VLConfig, mesh):
    return init_model(config, dtype="mixed_bfloat16", remat="full", seed=0, mesh=mesh)


def sft(config: Qwen25VLConfig, mesh, sizes: Sizes, peak) -> dict:
    from benchmarks.plan_shapes import sft_batch

    (rows, length), repeats = sizes.sft, sizes.repeats
    data = DataSection(max_pixels=sizes.max_pixels, bucket_lengths=[length])
    batch = sft_batch(config, rows, length, data)
    train = TrainSection(max_steps=1000, learning_rate=1e-6, warmup_ratio=0.0, progress=False)
    trainer = SFTTrainer(training_model(config, mesh), mesh, train, train.max_steps, seed=0)
    seconds = median_seconds(lambda: trainer.step([batch])["loss"], repeats)
    grids = [image_grid(config, data)] * 2 * rows
    targets = rows * (length - length // 2)
    flops = step_flops(config, length, rows * length, targets, grids, True)
    out = {
        "rows": rows,
        "tokens_per_row": length,
        "step_s": seconds,
        "tokens_per_s": rows * length / seconds,
        "model_tflops_per_step": flops / 1e12,
    }
    if peak is not None:
        out["mfu"] = flops / seconds / (peak * 1e12 * mesh.size)
    return out


def sampling(config: Qwen25VLConfig, mesh, sizes: Sizes) -> dict:
    data = DataSection(max_pixels=sizes.max_pixels)
    batch = sampling_prompts(config, sizes.prompts, data)
    model = training_model(config, mesh)
    options = dict(num_samples=sizes.samples, max_new_tokens=sizes.new_tokens, eos_token_ids=[])
    seeds = iter(range(1_000_000))
    seconds = median_seconds(
        lambda: sample(model, batch, seed=next(seeds), **options).lengths, sizes.repeats
    )
    tokens = sizes.prompts * sizes.samples * sizes.new_tokens
    return {
        "prompts": sizes.prompts,
        "samples_per_prompt": sizes.samples,
        "new_tokens": sizes.new_tokens,
        "prompt_tokens": int(batch["input_ids"].shape[1]),
        "call_s": seconds,
        "tokens_per_s": tokens / seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true", help="the CPU, tiny shapes")
    ap.add_argument(
        "--layers", type=int, default=8, help="decoder layers of the SFT/sampling model"
    )
    args = ap.parse_args(argv)
    sizes = DRY if args.dry_run else FULL
    backend = resolve_kernels("auto")
    if backend == "cpu" and not args.dry_run:
        ap.error("no GPU or TPU here: run on an accelerator host, or pass --dry-run")
    kernels = ["tpu", "gpu"] if args.dry_run else [backend]
    base = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", sizes.config))
    os.makedirs(args.out, exist_ok=True)
    info = versions()
    peak = peak_tflops(info["device_kind"])
    result: dict = {
        "versions": info,
        "peak_bf16_tflops_per_device": peak,
        "dry_run": args.dry_run,
        "model": sizes.config,
    }
    path = os.path.join(args.out, "results.json")

    def save(section: str, value) -> None:
        result[section] = value
        with open(path, "w") as f:  # every finished section survives a later failure
            json.dump(result, f, indent=2)
        print(f"[device] {section}: {json.dumps(value)}", file=sys.stderr, flush=True)

    parity_config = reduced_config(base, 2, 2) if not args.dry_run else base
    save("parity", [parity(parity_config, k, sizes.parity_image) for k in kernels])
    rows, length = sizes.attention
    save("attention", [attention(base, k, rows, length, sizes.repeats) for k in kernels])
    depth = min(args.layers, base.text.num_hidden_layers)
    cut = reduced_config(base, depth, 8) if not args.dry_run else base
    # every local device, or as many as the SFT rows divide over (fsdp)
    mesh = make_mesh(MeshConfig(data=1, fsdp=math.gcd(sizes.sft[0], jax.device_count()), tensor=1))
    result["layers"] = cut.text.num_hidden_layers
    save("sft", sft(cut, mesh, sizes, peak))
    save("sampling", sampling(cut, mesh, sizes))
    print(f"[device] wrote {path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

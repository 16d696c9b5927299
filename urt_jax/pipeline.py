"""``urt-jax run``: the stages a run config declares, each resumable (finished stages are skipped).

Stages available so far: ``init`` (a model from a configs/model YAML with random weights, or from a
Hugging Face directory, written as HF safetensors), ``forward`` (a jitted forward pass on a batch
with an image and a video, timed), ``export`` (Hugging Face and orbax exports, both reloaded and
checked against the model). Training stages (cold-start SFT, rejection sampling, GRPO) and
evaluation are added to this registry as they land.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from urt_jax.config import RunConfig, RunConfigError
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import from_pretrained, save_pretrained
from urt_jax.model.inputs import prepare_inputs
from urt_jax.model.orbax_io import load_orbax, save_orbax
from urt_jax.model.qwen2_5_vl import Qwen25VL


def _log(msg: str) -> None:
    print(f"[urt-jax] {msg}", flush=True)


def _stage_init(cfg: RunConfig, out: str, report: dict) -> None:
    dst = os.path.join(out, "init_hf")
    if cfg.model.hf_dir:
        model = from_pretrained(cfg.model.hf_dir, dtype=cfg.model.dtype, remat=cfg.model.remat)
        source = cfg.model.hf_dir
    elif cfg.model.config:
        mcfg = Qwen25VLConfig.from_yaml(cfg.model.config)
        model = Qwen25VL(
            mcfg, dtype=cfg.model.dtype, remat=cfg.model.remat, rngs=nnx.Rngs(cfg.seed)
        )
        source = cfg.model.config
    else:
        raise RunConfigError("model: set either model.config (a YAML) or model.hf_dir")
    save_pretrained(model, dst)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    report["init"] = {"source": source, "params": n_params, "hf_dir": dst}
    _log(f"init: {n_params / 1e6:.2f}M parameters from {source} -> {dst}")


def demo_batch(config: Qwen25VLConfig, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """A left-padded batch in the HF processor's format: one row with an 8x12-patch image, text
    and a 3-frame video; another with a smaller image. Pixel values are random."""
    rng = np.random.default_rng(seed)
    c, v = config, config.vision
    text = lambda n: list(rng.integers(0, min(1000, c.text.vocab_size), n))  # noqa: E731

    def vis(tok: int, t: int, h: int, w: int) -> list[int]:
        return [
            c.vision_start_token_id,
            *[tok] * (t * h * w // v.merge_unit),
            c.vision_end_token_id,
        ]

    rows, grids, vgrids = [], [], []
    for i in range(batch):
        if i % 2 == 0:
            rows.append(
                text(6)
                + vis(c.image_token_id, 1, 8, 12)
                + text(4)
                + vis(c.video_token_id, 3, 4, 4)
                + text(8)
            )
            grids.append([1, 8, 12])
            vgrids.append([3, 4, 4])
        else:
            rows.append(text(10) + vis(c.image_token_id, 1, 4, 6) + text(3))
            grids.append([1, 4, 6])
    length = max(map(len, rows))
    ids = np.full((batch, length), c.text.bos_token_id or 0, np.int64)
    mask = np.zeros((batch, length), np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = r
        mask[i, length - len(r) :] = 1
    img = np.array(grids)
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "image_grid_thw": img,
        "pixel_values": rng.standard_normal((int(img.prod(1).sum()), v.patch_dim), np.float32),
    }
    if vgrids:
        vg = np.array(vgrids)
        out.update(
            video_grid_thw=vg,
            second_per_grid_ts=np.full(len(vg), 0.5, np.float32),
            pixel_values_videos=rng.standard_normal(
                (int(vg.prod(1).sum()), v.patch_dim), np.float32
            ),
        )
    return out


def _logits(model: Qwen25VL, batch: dict[str, np.ndarray]) -> np.ndarray:
    inputs, _ = prepare_inputs(model.config, **batch)
    forward = nnx.jit(lambda m, x: m.forward(x))
    return np.asarray(forward(model, jax.tree.map(jnp.asarray, inputs)))


def _stage_forward(cfg: RunConfig, out: str, report: dict) -> None:
    model = from_pretrained(os.path.join(out, "init_hf"), dtype=cfg.model.dtype)
    batch = demo_batch(model.config, cfg.seed)
    inputs, _ = prepare_inputs(model.config, **batch)
    inputs = jax.tree.map(jnp.asarray, inputs)
    forward = nnx.jit(lambda m, x: m.forward(x))
    t0 = time.perf_counter()
    forward(model, inputs).block_until_ready()
    compile_s = time.perf_counter() - t0
    steps, t0 = 5, time.perf_counter()
    for _ in range(steps):
        logits = forward(model, inputs)
    logits.block_until_ready()
    step_s = (time.perf_counter() - t0) / steps
    tokens = int(batch["attention_mask"].sum())
    report["forward"] = {
        "batch_shape": list(batch["input_ids"].shape),
        "tokens": tokens,
        "compile_s": round(compile_s, 3),
        "step_s": round(step_s, 5),
        "tokens_per_s": round(tokens / step_s, 1),
        "logits_finite": bool(np.isfinite(np.asarray(logits)).all()),
    }
    _log(
        f"forward: logits {tuple(logits.shape)}, compile {compile_s:.1f}s, "
        f"{tokens / step_s:,.0f} tokens/s"
    )


def _stage_export(cfg: RunConfig, out: str, report: dict) -> None:
    model = from_pretrained(os.path.join(out, "init_hf"))
    batch = demo_batch(model.config, cfg.seed)
    ref = _logits(model, batch)
    hf_dir, orbax_dir = os.path.join(out, "hf"), os.path.join(out, "orbax")
    save_pretrained(model, hf_dir)
    save_orbax(model, orbax_dir)
    diffs = {}
    for name, reloaded in (("hf", from_pretrained(hf_dir)), ("orbax", load_orbax(orbax_dir))):
        diffs[name] = float(np.abs(_logits(reloaded, batch) - ref).max())
    report["export"] = {"hf_dir": hf_dir, "orbax_dir": orbax_dir, "reload_max_abs_diff": diffs}
    _log(f"export: {hf_dir} and {orbax_dir}; reload max |diff| {diffs}")
    if any(d != 0.0 for d in diffs.values()):
        raise RuntimeError(f"exported model does not reproduce the logits: {diffs}")


STAGES: dict[str, Callable[[RunConfig, str, dict], None]] = {
    "init": _stage_init,
    "forward": _stage_forward,
    "export": _stage_export,
}


def run(cfg: RunConfig) -> dict:
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise RunConfigError(f"stages: unknown stage(s) {unknown}; available: {list(STAGES)}")
    out = os.path.abspath(cfg.output_dir)
    os.makedirs(out, exist_ok=True)
    report_path = os.path.join(out, "report.json")
    report = {}
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    report.setdefault("stages_done", [])
    for name in cfg.stages:
        if name in report["stages_done"]:
            _log(f"{name}: already done, skipped (delete {report_path} to rerun)")
            continue
        t0 = time.perf_counter()
        STAGES[name](cfg, out, report)
        report["stages_done"].append(name)
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        tmp = report_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, report_path)
    _log(f"done: {report_path}")
    return report

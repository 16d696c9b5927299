"""``urt-jax run``: the stages a run config declares, each resumable.

Stages: ``init`` (a model from a configs/model YAML with random weights, or from a Hugging Face
directory, written as HF safetensors with its tokenizer and processor files), ``data`` (the
synthetic task generated, or the configured data files read and validated; token-length
statistics), ``forward`` (a jitted forward pass on a real batch, timed), ``eval``, ``sft`` (the
cold start), ``sample`` (rejection sampling), ``rs_sft`` (SFT on the correct samples), ``grpo``
(on the prompts answered wrongly) and ``export`` (Hugging Face and orbax directories, both
reloaded and checked against the model).

Every stage records the settings it ran with in report.json. A finished stage is skipped when
its settings are unchanged and no stage whose outputs it read is redone; otherwise the run stops
and names the changed keys, unless asked to redo: then those stages run again, their outputs
replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from urt_jax.atomic import write_text
from urt_jax.config import RunConfig, RunConfigError
from urt_jax.data.vl_processor import has_tokenizer
from urt_jax.evaluate import evaluate_model
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import from_pretrained, save_pretrained
from urt_jax.model.orbax_io import load_orbax, save_orbax
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.plots import plot_run
from urt_jax.run_inputs import (
    SYNTHETIC,
    example_builder,
    heldout_records,
    train_data_root,
    train_records,
)
from urt_jax.run_settings import STAGE_KEYS, SettingsChanged, changes, describe, settings_of
from urt_jax.train.rejection import rejection_sample


def _log(msg: str) -> None:
    print(f"[urt-jax] {msg}", flush=True)


def _stage_init(cfg: RunConfig, out: str, report: dict) -> None:
    """The starting model in {out}/init_hf, with the tokenizer and processor files every later
    stage reads (the checkpoint's own, or for a random init data.tokenizer or the demo's)."""
    from urt_jax.data.examples import run_processor

    dst = os.path.join(out, "init_hf")
    if cfg.model.hf_dir:
        model = from_pretrained(cfg.model.hf_dir, dtype=cfg.model.dtype, remat=cfg.model.remat)
        processor = run_processor(cfg.data, cfg.model.hf_dir)
        source = cfg.model.hf_dir
    elif cfg.model.config:
        mcfg = Qwen25VLConfig.from_yaml(cfg.model.config)
        model = Qwen25VL(
            mcfg, dtype=cfg.model.dtype, remat=cfg.model.remat, rngs=nnx.Rngs(cfg.seed)
        )
        processor = run_processor(cfg.data, None)
        source = cfg.model.config
    else:
        raise RunConfigError("model: set either model.config (a YAML) or model.hf_dir")
    processor.check_model(model.config)
    save_pretrained(model, dst)  # copies a checkpoint's tokenizer, processor, generation files
    if cfg.data.tokenizer or not has_tokenizer(dst):
        processor.save_pretrained(dst)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    report["init"] = {"source": source, "params": n_params, "hf_dir": dst}
    _log(f"init: {n_params / 1e6:.2f}M parameters from {source} -> {dst}")


def _stage_data(cfg: RunConfig, out: str, report: dict) -> None:
    builder = example_builder(cfg, os.path.join(out, "init_hf"))
    stats = {}
    for split, opener in (("train", train_records), ("heldout", heldout_records)):
        if split == "heldout" and cfg.data.heldout is None and cfg.data.train != SYNTHETIC:
            continue
        records = opener(cfg)
        sample = [builder(records[i]) for i in range(min(len(records), 32))]
        lengths = [len(e["input_ids"]) for e in sample]
        tasks: dict[str, int] = {}
        for i in range(len(records)):
            tasks[records[i].task] = tasks.get(records[i].task, 0) + 1
        stats[split] = {
            "records": len(records),
            "tasks": tasks,
            "tokens_mean": float(np.mean(lengths)),
            "tokens_max": int(max(lengths)),
        }
        _log(
            f"data: {split}: {len(records)} records {tasks}, "
            f"{np.mean(lengths):.0f} tokens on average (max {max(lengths)})"
        )
    report["data"] = stats


def _first_batch(cfg: RunConfig, model_dir: str):
    from urt_jax.data.batching import Buckets
    from urt_jax.data.pipeline import PipelineOptions, make_dataset

    d = cfg.data
    builder = example_builder(cfg, model_dir)
    options = PipelineOptions(
        batch_size=d.batch_size,
        seed=cfg.seed,
        buckets=Buckets(lengths=tuple(d.bucket_lengths)),
        process_index=0,
        process_count=1,
    )
    pad = builder.chat.pad_token_id
    return next(iter(make_dataset(train_records(cfg), builder, builder.model_config, options, pad)))


def _logits(model: Qwen25VL, inputs) -> np.ndarray:
    forward = nnx.jit(lambda m, x: m.forward(x))
    return np.asarray(forward(model, jax.tree.map(jnp.asarray, inputs)))


def _stage_forward(cfg: RunConfig, out: str, report: dict) -> None:
    model = from_pretrained(os.path.join(out, "init_hf"), dtype=cfg.model.dtype)
    batch = _first_batch(cfg, os.path.join(out, "init_hf"))
    inputs = jax.tree.map(jnp.asarray, batch.inputs)
    forward = nnx.jit(lambda m, x: m.forward(x))
    t0 = time.perf_counter()
    forward(model, inputs).block_until_ready()
    compile_s = time.perf_counter() - t0
    steps, t0 = 3, time.perf_counter()
    for _ in range(steps):
        logits = forward(model, inputs)
    logits.block_until_ready()
    step_s = (time.perf_counter() - t0) / steps
    tokens = int(np.asarray(batch.inputs.attention_mask).sum())
    report["forward"] = {
        "batch_shape": list(batch.inputs.input_ids.shape),
        "tokens": tokens,
        "vision_patches": int(batch.inputs.pixel_values.shape[0])
        if batch.inputs.pixel_values is not None
        else 0,
        "compile_s": round(compile_s, 3),
        "step_s": round(step_s, 5),
        "tokens_per_s": round(tokens / step_s, 1),
        "logits_finite": bool(np.isfinite(np.asarray(logits)).all()),
    }
    _log(
        f"forward: logits {tuple(logits.shape)}, compile {compile_s:.1f}s, "
        f"{tokens / step_s:,.0f} tokens/s"
    )


def _sft_stage(cfg: RunConfig, out: str, report: dict, name: str, data: str, start: str) -> None:
    from urt_jax.train.run_sft import run_sft

    result = run_sft(cfg, os.path.join(out, name), train_spec=data, hf_dir=start)
    report[name] = {
        "steps": result["steps"],
        "final_loss": result["final"].get("loss"),
        "metrics": os.path.join(out, name, "metrics.jsonl"),
    }


def _stage_sft(cfg: RunConfig, out: str, report: dict) -> None:
    """The cold start: SFT of the initial model on the training data (teacher CoT replies)."""
    _sft_stage(cfg, out, report, "sft", None, os.path.join(out, "init_hf"))


def _stage_sample(cfg: RunConfig, out: str, report: dict) -> None:
    stats = rejection_sample(
        cfg,
        _latest_model_dir(out),
        train_records(cfg),
        train_data_root(cfg),
        os.path.join(out, "rejection_sampling"),
    )
    report["rejection_sampling"] = stats
    _log(
        f"rejection sampling: {stats['correct_samples']}/{stats['samples']} samples correct; "
        f"{stats['sft_samples']} kept for SFT, {stats['grpo_prompts']} prompts for GRPO"
    )


def _stage_eval(cfg: RunConfig, out: str, report: dict, key: str = "eval") -> None:
    from urt_jax.evaluate import format_value

    model_dir = _latest_model_dir(out)
    summary = evaluate_model(cfg, model_dir, heldout_records(cfg), os.path.join(out, "eval"))
    report.setdefault("stages", []).append(
        {
            "stage": key,
            "name": f"eval:{_model_name(model_dir)}",
            "accuracy": summary["accuracy"],
            "format_rate": summary["format_rate"],
            "order_agreement": summary["order_agreement"],
            **({"benchmarks": summary["benchmarks"]} if "benchmarks" in summary else {}),
        }
    )
    report["final"] = {"accuracy": summary["accuracy"], "format_rate": summary["format_rate"]}
    skipped = summary["skipped"]
    _log(
        f"eval ({model_dir}): accuracy {format_value(summary['accuracy'])}, format rate "
        f"{format_value(summary['format_rate'])}, order agreement {summary['order_agreement']}"
        + (f"; {skipped} items skipped (prompt over data.max_length)" if skipped else "")
    )


def _rejection_output(out: str, name: str) -> str:
    """The rejection-sampling file for the next stage: its YAML manifest (which names the media
    root) when written, else the JSONL."""
    base = os.path.join(out, "rejection_sampling", name)
    return base + ".yaml" if os.path.exists(base + ".yaml") else base + ".jsonl"


def _stage_rs_sft(cfg: RunConfig, out: str, report: dict) -> None:
    """The second SFT: the cold-started model on its own correct samples (rejection sampling)."""
    from urt_jax.data.sources import count_records

    data = _rejection_output(out, "sft")
    if not os.path.exists(data):
        raise RunConfigError("stage rs_sft needs the 'sample' stage before it")
    kept = count_records(data, train_data_root(cfg))
    if kept < cfg.data.batch_size:
        report["rs_sft"] = {"skipped": f"{kept} correct samples, fewer than one batch"}
        _log(f"rs_sft: skipped, rejection sampling kept only {kept} samples")
        return
    rs = cfg.rejection
    train = dataclasses.replace(
        cfg.train,
        max_steps=rs.sft_max_steps or cfg.train.max_steps,
        learning_rate=rs.sft_learning_rate or cfg.train.learning_rate,
    )
    rs_cfg = dataclasses.replace(cfg, train=train)
    _sft_stage(rs_cfg, out, report, "rs_sft", data, os.path.join(out, "sft", "hf"))


def _stage_grpo(cfg: RunConfig, out: str, report: dict) -> None:
    """GRPO from the newest model on the prompts rejection sampling answered wrongly (or
    grpo.data), then the policy in {out}/grpo/hf."""
    from urt_jax.data.sources import count_records
    from urt_jax.train.run_grpo import run_grpo

    prompts = cfg.grpo.data or _rejection_output(out, "grpo")
    if not os.path.exists(prompts):
        raise RunConfigError("stage grpo needs grpo.data or the 'sample' stage before it")
    root = cfg.data.data_root if cfg.grpo.data else train_data_root(cfg)
    n = count_records(prompts, root, cfg.data.tfds_data_dir)
    if n == 0:
        report["grpo"] = {"skipped": "no prompts answered wrongly"}
        _log("grpo: skipped, rejection sampling left no wrongly answered prompts")
        return
    result = run_grpo(
        cfg,
        os.path.join(out, "grpo"),
        prompts_spec=prompts,
        hf_dir=_latest_model_dir(out),
        data_root=root,
    )
    final = result["final"]
    report["grpo"] = {
        "steps": result["steps"],
        "prompts": n,
        "final": {k: final.get(k) for k in ("reward", "accuracy", "format_rate", "kl")},
        "metrics": os.path.join(out, "grpo", "metrics.jsonl"),
    }


def _model_name(model_dir: str) -> str:
    """'init_hf' for {out}/init_hf, 'sft' for {out}/sft/hf."""
    name = os.path.basename(os.path.normpath(model_dir))
    return os.path.basename(os.path.dirname(os.path.normpath(model_dir))) if name == "hf" else name


def _latest_model_dir(out: str) -> str:
    """The newest trained model of the run (stages write {stage}/hf), else the initial one."""
    for stage in ("grpo", "rs_sft", "sft"):
        path = os.path.join(out, stage, "hf")
        if os.path.isdir(path):
            return path
    return os.path.join(out, "init_hf")


def _stage_export(cfg: RunConfig, out: str, report: dict) -> None:
    model_dir = _latest_model_dir(out)
    model = from_pretrained(model_dir)
    inputs = _first_batch(cfg, model_dir).inputs
    ref = _logits(model, inputs)
    hf_dir, orbax_dir = os.path.join(out, "hf"), os.path.join(out, "orbax")
    save_pretrained(model, hf_dir)  # with the tokenizer and processor files of model_dir
    save_orbax(model, orbax_dir)
    diffs = {}
    for name, reloaded in (("hf", from_pretrained(hf_dir)), ("orbax", load_orbax(orbax_dir))):
        diffs[name] = float(np.abs(_logits(reloaded, inputs) - ref).max())
    report["export"] = {
        "hf_dir": hf_dir,
        "orbax_dir": orbax_dir,
        "reload_max_abs_diff": diffs,
        "files": sorted(os.listdir(hf_dir)),
    }
    _log(f"export: {hf_dir} and {orbax_dir}; reload max |diff| {diffs}")
    if any(d != 0.0 for d in diffs.values()):
        raise RuntimeError(f"exported model does not reproduce the logits: {diffs}")


STAGES: dict[str, Callable[[RunConfig, str, dict], None]] = {
    "init": _stage_init,
    "data": _stage_data,
    "sft": _stage_sft,
    "eval": _stage_eval,
    "sample": _stage_sample,
    "rs_sft": _stage_rs_sft,
    "grpo": _stage_grpo,
    "forward": _stage_forward,
    "export": _stage_export,
}


# What each stage writes under the run directory (removed when the stage is redone).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "init": ("init_hf",),
    "data": ("data",),
    "forward": (),
    "eval": (),  # {out}/eval is rewritten by each evaluation
    "sft": ("sft",),
    "sample": ("rejection_sampling",),
    "rs_sft": ("rs_sft",),
    "grpo": ("grpo",),
    "export": ("hf", "orbax"),
}


def _stage_keys(stages: list[str]) -> list[str]:
    """'eval', 'eval.2', ...: a stage may run more than once."""
    seen: dict[str, int] = {}
    keys = []
    for name in stages:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}.{seen[name]}")
    return keys


def _settings(cfg: RunConfig, index: int) -> dict:
    name = cfg.stages[index]
    return settings_of(cfg, STAGE_KEYS[name], stages_before=list(cfg.stages[:index]))


# Stages whose outputs later stages read (a model or data); the others only report.
PRODUCERS = ("init", "data", "sft", "sample", "rs_sft", "grpo")


def _stale_stages(cfg: RunConfig, report: dict) -> list[tuple[str, list[str]]]:
    """(stage key, why) of every finished stage whose results do not belong to this config: its
    recorded settings differ, or it comes after such a stage whose outputs it read."""
    recorded = report.get("settings", {})
    stale, upstream = [], None
    for i, (name, key) in enumerate(zip(cfg.stages, _stage_keys(cfg.stages), strict=True)):
        if key not in report["stages_done"]:
            continue
        new = json.loads(json.dumps(_settings(cfg, i), default=str))
        if key not in recorded:
            why = ["no settings recorded for this stage"]
        else:
            why = changes(recorded[key], new)
        if not why and upstream is not None:
            why = [f"it read the outputs of '{upstream}', which is redone"]
        if why:
            stale.append((key, why))
            if name in PRODUCERS and upstream is None:
                upstream = key
    return stale


def _forget(report: dict, out: str, keys: list[str]) -> None:
    """Drops the results of the stages ``keys`` (report entries and output directories)."""
    import shutil

    for key in keys:
        if key in report["stages_done"]:
            report["stages_done"].remove(key)
        report.get("seconds", {}).pop(key, None)
        report.get("settings", {}).pop(key, None)
        name = key.split(".")[0]
        if name in ("init", "data", "forward", "rejection_sampling", "sft", "rs_sft", "grpo"):
            report.pop(name, None)
        if name == "sample":
            report.pop("rejection_sampling", None)
        for sub in STAGE_OUTPUTS[name]:
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    report["stages"] = [s for s in report.get("stages", []) if s.get("stage") not in keys]


def run(cfg: RunConfig, redo: bool = False) -> dict:
    """Runs the config's stages, skipping those already done with the same settings. A finished
    stage whose settings changed stops the run with the changed keys, or with ``redo`` is run
    again, with every later stage that read its outputs."""
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
    keys = _stage_keys(cfg.stages)
    stale = _stale_stages(cfg, report)
    if stale:
        first, why = stale[0]
        names = ", ".join(f"'{k}'" for k, _ in stale)
        if not redo:
            raise SettingsChanged(
                f"{out}: stage '{first}' was run with other settings ({describe(why)}), so its "
                f"results do not belong to this config (stages affected: {names}). Add --redo "
                "to run them again (their outputs are replaced), or set output_dir to start a "
                "new run"
            )
        _log(f"settings changed ({first}: {describe(why)}); redoing {names}")
        _forget(report, out, [k for k, _ in stale])
    for index, (name, key) in enumerate(zip(cfg.stages, keys, strict=True)):
        if key in report["stages_done"]:
            _log(f"{key}: already done with these settings, skipped")
            continue
        t0 = time.perf_counter()
        if name == "eval":
            _stage_eval(cfg, out, report, key)
        else:
            STAGES[name](cfg, out, report)
        report["stages_done"].append(key)
        report.setdefault("seconds", {})[key] = round(time.perf_counter() - t0, 2)
        report.setdefault("settings", {})[key] = json.loads(
            json.dumps(_settings(cfg, index), default=str)
        )
        report["plots"] = plot_run(out, report)
        write_text(report_path, json.dumps(report, indent=2))
    _log(f"done: {report_path}")
    return report

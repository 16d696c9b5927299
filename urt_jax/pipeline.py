"""``urt-jax run``: the stages a run config declares, each resumable (finished stages are skipped).

Stages available so far: ``init`` (a model from a configs/model YAML with random weights, or from a
Hugging Face directory, written as HF safetensors), ``data`` (the synthetic task generated, or the
configured data files read and validated; token-length statistics), ``forward`` (a jitted forward
pass on a real batch from the grain pipeline, timed), ``export`` (Hugging Face directory with
tokenizer and processor files, and an orbax directory, both reloaded and checked against the
model). Training stages (cold-start SFT, rejection sampling, GRPO) and evaluation are added to this
registry as they land.
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


def _builder(cfg: RunConfig, model_config: Qwen25VLConfig, include_reply: bool = True):
    from urt_jax.data.examples import builder_from_config

    return builder_from_config(cfg.data, model_config, cfg.seed, include_reply)


def _records(cfg: RunConfig, out: str, split: str):
    from urt_jax.data.sources import open_records

    d = cfg.data
    spec = d.train if split == "train" else d.heldout
    if d.train == "synthetic" and (split == "train" or spec is None):
        root = os.path.join(out, "data")
        return open_records(os.path.join(root, f"{split}.jsonl"), root)
    if spec is None:
        raise RunConfigError(f"data.{split}: not set")
    return open_records(spec, d.data_root, d.tfds_data_dir, d.skip_invalid)


def _stage_data(cfg: RunConfig, out: str, report: dict) -> None:
    from urt_jax.train.run_sft import synthetic_train_file

    d = cfg.data
    if d.train == "synthetic":
        synthetic_train_file(cfg, out)  # writes {out}/data/train.jsonl and heldout.jsonl
    model_config = from_pretrained_config(out)
    builder = _builder(cfg, model_config)
    stats = {}
    for split in ("train", "heldout"):
        if split == "heldout" and d.heldout is None and d.train != "synthetic":
            continue
        records = _records(cfg, out, split)
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


def from_pretrained_config(out: str) -> Qwen25VLConfig:
    return Qwen25VLConfig.from_hf_file(os.path.join(out, "init_hf"))


def _first_batch(cfg: RunConfig, out: str, config: Qwen25VLConfig):
    from urt_jax.data.batching import Buckets
    from urt_jax.data.pipeline import PipelineOptions, make_dataset

    d = cfg.data
    builder = _builder(cfg, config)
    options = PipelineOptions(
        batch_size=d.batch_size,
        seed=cfg.seed,
        buckets=Buckets(lengths=tuple(d.bucket_lengths)),
        process_index=0,
        process_count=1,
    )
    pad = builder.tokenizer.pad_token_id or 0
    return next(iter(make_dataset(_records(cfg, out, "train"), builder, config, options, pad)))


def _logits(model: Qwen25VL, inputs) -> np.ndarray:
    forward = nnx.jit(lambda m, x: m.forward(x))
    return np.asarray(forward(model, jax.tree.map(jnp.asarray, inputs)))


def _stage_forward(cfg: RunConfig, out: str, report: dict) -> None:
    model = from_pretrained(os.path.join(out, "init_hf"), dtype=cfg.model.dtype)
    batch = _first_batch(cfg, out, model.config)
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


def _stage_sft(cfg: RunConfig, out: str, report: dict) -> None:
    """The cold start: SFT of the initial model on the training data (teacher CoT replies)."""
    from urt_jax.train.run_sft import run_sft

    spec = os.path.join(out, "data", "train.jsonl") if cfg.data.train == "synthetic" else None
    root = os.path.join(out, "data") if cfg.data.train == "synthetic" else None
    result = run_sft(
        cfg,
        os.path.join(out, "sft"),
        train_spec=spec,
        hf_dir=os.path.join(out, "init_hf"),
        data_root=root,
    )
    report["sft"] = {
        "steps": result["steps"],
        "final_loss": result["final"].get("loss"),
        "metrics": os.path.join(out, "sft", "metrics.jsonl"),
    }


def evaluate_model(cfg: RunConfig, model_dir: str, records, out_dir: str) -> dict:
    """Greedy judgements of the held-out records in both candidate orders; writes eval.json,
    eval.md and judgements.jsonl under out_dir and returns the summary."""
    from urt_jax.evaluate import EvalOptions, judge, summarize, write_report

    model = from_pretrained(model_dir, dtype=cfg.model.dtype)
    builder = _builder(cfg, model.config, include_reply=False)
    e = cfg.eval
    if e.max_items is not None:
        records = [records[i] for i in range(min(e.max_items, len(records)))]
    options = EvalOptions(
        max_new_tokens=e.max_new_tokens,
        batch_size=e.batch_size,
        swap=e.swap,
        mode=e.mode,
        seed=cfg.seed,
    )
    judgements = judge(model, builder.tokenizer, records, builder, options)
    summary = summarize(judgements)
    write_report(summary, judgements, out_dir)
    return summary


def rejection_sample(cfg: RunConfig, model_dir: str, records, data_root: str, out_dir: str) -> dict:
    """K samples per training prompt: correct ones -> {out_dir}/sft.jsonl, wrongly answered
    prompts -> {out_dir}/grpo.jsonl (released formats), statistics -> {out_dir}/stats.json."""
    from urt_jax.data.templates import Templates
    from urt_jax.train.rejection import (
        RejectionOptions,
        generate_completions,
        split_samples,
        write_released_formats,
    )

    model = from_pretrained(model_dir, dtype=cfg.model.dtype)
    builder = _builder(cfg, model.config, include_reply=False)
    r = cfg.rejection
    if r.max_prompts is not None:
        records = [records[i] for i in range(min(r.max_prompts, len(records)))]
    options = RejectionOptions(
        samples_per_prompt=r.samples_per_prompt,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        batch_size=r.batch_size,
        grpo_prompts=r.grpo_prompts,
        require_format=r.require_format,
        seed=cfg.seed,
    )
    completions = generate_completions(model, builder.tokenizer, records, builder, options)
    sft, grpo, stats = split_samples(records, completions, options)
    write_released_formats(
        sft,
        grpo,
        Templates.load(cfg.data.templates),
        data_root,
        os.path.join(out_dir, "sft.jsonl"),
        os.path.join(out_dir, "grpo.jsonl"),
    )
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    return stats


def _stage_sample(cfg: RunConfig, out: str, report: dict) -> None:
    root = (
        os.path.join(out, "data")
        if cfg.data.train == "synthetic"
        else (cfg.data.data_root or os.path.dirname(os.path.abspath(cfg.data.train)))
    )
    stats = rejection_sample(
        cfg,
        _latest_model_dir(out),
        _records(cfg, out, "train"),
        root,
        os.path.join(out, "rejection_sampling"),
    )
    report["rejection_sampling"] = stats
    _log(
        f"rejection sampling: {stats['correct_samples']}/{stats['samples']} samples correct; "
        f"{stats['sft_samples']} kept for SFT, {stats['grpo_prompts']} prompts for GRPO"
    )


def _stage_eval(cfg: RunConfig, out: str, report: dict) -> None:
    model_dir = _latest_model_dir(out)
    summary = evaluate_model(
        cfg, model_dir, _records(cfg, out, "heldout"), os.path.join(out, "eval")
    )
    report.setdefault("stages", []).append(
        {
            "name": f"eval:{_model_name(model_dir)}",
            "accuracy": summary["accuracy"],
            "format_rate": summary["format_rate"],
            "order_agreement": summary["order_agreement"],
        }
    )
    report["final"] = {"accuracy": summary["accuracy"], "format_rate": summary["format_rate"]}
    _log(
        f"eval ({model_dir}): accuracy {summary['accuracy']:.3f}, format rate "
        f"{summary['format_rate']:.3f}, order agreement {summary['order_agreement']}"
    )


def _stage_rs_sft(cfg: RunConfig, out: str, report: dict) -> None:
    """The second SFT: the cold-started model on its own correct samples (rejection sampling)."""
    from urt_jax.train.run_sft import run_sft

    data = os.path.join(out, "rejection_sampling", "sft.jsonl")
    if not os.path.exists(data):
        raise RunConfigError("stage rs_sft needs the 'sample' stage before it")
    with open(data) as f:
        kept = sum(1 for line in f if line.strip())
    if kept < cfg.data.batch_size:
        report["rs_sft"] = {"skipped": f"{kept} correct samples, fewer than one batch"}
        _log(f"rs_sft: skipped, rejection sampling kept only {kept} samples")
        return
    root = (
        os.path.join(out, "data")
        if cfg.data.train == "synthetic"
        else (cfg.data.data_root or os.path.dirname(os.path.abspath(cfg.data.train)))
    )
    result = run_sft(
        cfg,
        os.path.join(out, "rs_sft"),
        train_spec=data,
        hf_dir=os.path.join(out, "sft", "hf"),
        data_root=root,
    )
    report["rs_sft"] = {
        "steps": result["steps"],
        "final_loss": result["final"].get("loss"),
        "metrics": os.path.join(out, "rs_sft", "metrics.jsonl"),
    }


def _model_name(model_dir: str) -> str:
    """'init_hf' for {out}/init_hf, 'sft' for {out}/sft/hf."""
    name = os.path.basename(os.path.normpath(model_dir))
    return os.path.basename(os.path.dirname(os.path.normpath(model_dir))) if name == "hf" else name


def _latest_model_dir(out: str) -> str:
    """The newest trained model of the run (stages write {stage}/hf), else the initial one."""
    for stage in ("rs_sft", "sft"):
        path = os.path.join(out, stage, "hf")
        if os.path.isdir(path):
            return path
    return os.path.join(out, "init_hf")


def _hf_extras(cfg: RunConfig) -> dict[str, str]:
    """Tokenizer and processor files, so the export loads with AutoTokenizer/AutoProcessor."""
    from urt_jax.data.processor import ProcessorConfig
    from urt_jax.data.tokenizer import ASSET_DIR

    tok_dir = cfg.data.tokenizer or ASSET_DIR
    extras = {}
    for name in sorted(os.listdir(tok_dir)):
        with open(os.path.join(tok_dir, name)) as f:
            extras[name] = f.read()
    d = cfg.data
    proc = ProcessorConfig.with_limits(d.min_pixels, d.max_pixels, d.max_frames)
    extras["preprocessor_config.json"] = json.dumps(proc.to_hf_dict(), indent=2) + "\n"
    extras["video_preprocessor_config.json"] = json.dumps(proc.video_hf_dict(), indent=2) + "\n"
    return extras


def _stage_export(cfg: RunConfig, out: str, report: dict) -> None:
    model = from_pretrained(_latest_model_dir(out))
    inputs = _first_batch(cfg, out, model.config).inputs
    ref = _logits(model, inputs)
    hf_dir, orbax_dir = os.path.join(out, "hf"), os.path.join(out, "orbax")
    extras = _hf_extras(cfg)
    save_pretrained(model, hf_dir, extra_files=extras)
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
    seen: dict[str, int] = {}
    for name in cfg.stages:
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}.{seen[name]}"  # a stage may run twice
        if key in report["stages_done"]:
            _log(f"{key}: already done, skipped (delete {report_path} to rerun)")
            continue
        t0 = time.perf_counter()
        STAGES[name](cfg, out, report)
        report["stages_done"].append(key)
        report.setdefault("seconds", {})[key] = round(time.perf_counter() - t0, 2)
        tmp = report_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, report_path)
    _log(f"done: {report_path}")
    return report

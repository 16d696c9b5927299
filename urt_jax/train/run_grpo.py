"""``urt-jax grpo``: the GRPO loop (policy, prompts and settings from a run config), resumable."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from urt_jax.atomic import cut_back_jsonl
from urt_jax.config import RunConfig, RunConfigError
from urt_jax.data.examples import builder_from_config
from urt_jax.data.sources import open_records
from urt_jax.run_settings import check_directory, settings_of
from urt_jax.sharding.mesh import initialize_distributed, make_mesh, writes_here
from urt_jax.train.checkpoint import Checkpointer
from urt_jax.train.grpo import GRPOTrainer
from urt_jax.train.loop import run_steps
from urt_jax.train.metrics import MetricsLogger
from urt_jax.train.run_sft import export_model, load_model

log = logging.getLogger(__name__)

CONSOLE_KEYS = ("reward", "accuracy", "format_rate", "kl", "completion_length")


def prompt_order(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Record indices of generation batch ``step`` (1-based): consecutive slices of one seeded
    permutation per epoch, so a resumed run draws exactly the prompts it would have drawn."""
    out = []
    for k in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(k, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[pos]))
    return out


def run_grpo(
    cfg: RunConfig,
    out_dir: str,
    prompts_spec: str | None = None,
    hf_dir: str | None = None,
    data_root: str | None = None,
) -> dict:
    """Runs grpo.max_steps generation batches from the policy in ``hf_dir`` (default
    model.hf_dir) on the prompts of ``prompts_spec`` (default grpo.data), resuming from the newest
    complete checkpoint in {out_dir}/checkpoints; writes metrics and, at the end, {out_dir}/hf.

    On several processes (``mesh.distributed``) every process reads all prompts and the sampler
    gives all of them every completion (one program over the global mesh, gathered to each
    host), so rewards and advantages are computed identically everywhere; each process then
    places its own devices' rows of the update. Process 0 writes metrics and completions."""
    g = cfg.grpo
    spec = prompts_spec or g.data
    if spec is None:
        raise RunConfigError("grpo.data: set the GRPO prompts file (or run the 'sample' stage)")
    hf_dir = hf_dir or cfg.model.hf_dir
    initialize_distributed(cfg.mesh)
    settings = settings_of(
        cfg, ("seed", "model", "data", "train", "grpo"), inputs={"prompts": spec, "model": hf_dir}
    )
    check_directory(out_dir, settings, "a GRPO run", writes_here())
    mesh = make_mesh(cfg.mesh)
    model = load_model(cfg, mesh, hf_dir)
    d = cfg.data
    records = open_records(spec, data_root or d.data_root, d.tfds_data_dir, d.skip_invalid)
    if len(records) == 0:
        raise RunConfigError(f"grpo: no prompts in {spec}")
    builder = builder_from_config(d, model.config, cfg.seed, include_reply=False, model_dir=hf_dir)
    trainer = GRPOTrainer(model, mesh, cfg.train, g, cfg.seed)
    del model
    ckpt = Checkpointer(
        os.path.join(out_dir, "checkpoints"),
        cfg.train.checkpoint_every,
        cfg.train.keep_checkpoints,
        cfg.train.async_checkpoint,
    )
    start = 0
    restored = ckpt.restore_latest(trainer.abstract_state())
    if restored is not None:
        start, trainer.state, _ = restored
        log.info("resumed GRPO from step %d", start)
    writer = writes_here()
    logger = MetricsLogger(
        out_dir,
        g.max_steps,
        start,
        progress=cfg.train.progress,
        console_keys=CONSOLE_KEYS,
        enabled=writer,
    )
    completions_path = os.path.join(out_dir, "completions.jsonl")
    if writer:  # the steps after the checkpoint resumed from are sampled again
        cut_back_jsonl(completions_path, start)

    def one_step(step: int) -> dict:
        order = prompt_order(len(records), step, g.prompts_per_step, cfg.seed)
        batch = [records[i] for i in order]
        rollouts = trainer.rollout(builder.tokenizer, batch, builder, seed=cfg.seed + step)
        metrics = trainer.step(rollouts)
        if writer:
            _append_completions(completions_path, step, batch, rollouts, g.num_generations)
        return metrics

    last = run_steps(
        start,
        g.max_steps,
        one_step,
        lambda step: (trainer.state, {"step": step}),
        ckpt,
        logger,
        cfg.train.log_every,
    )
    export_model(trainer.model(), os.path.join(out_dir, "hf"), hf_dir, builder.chat)
    return {"steps": g.max_steps, "resumed_from": start, "final": last}


def _append_completions(path: str, step: int, records, rollouts, group: int) -> None:
    """Every sampled completion with its rewards, for reading what the policy does."""
    with open(path, "a") as f:
        for i, text in enumerate(rollouts.texts):
            record = records[i // group]
            row = {
                "step": step,
                "id": record.id,
                "solution": record.verdict,
                "completion": text,
                "reward": float(rollouts.rewards[i]),
                **{k: float(v[i]) for k, v in rollouts.reward_parts.items()},
                "advantage": float(rollouts.advantages[i]),
            }
            f.write(json.dumps(row) + "\n")

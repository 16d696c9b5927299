"""``urt-jax sft``: the supervised training loop (model and data from a run config)."""

from __future__ import annotations

import logging
import os

import jax

from urt_jax.config import RunConfig
from urt_jax.data.batching import Buckets
from urt_jax.data.examples import builder_from_config
from urt_jax.data.pipeline import PipelineOptions, make_dataset
from urt_jax.data.sources import open_records
from urt_jax.data.vl_processor import has_tokenizer
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import from_pretrained, save_pretrained
from urt_jax.run_inputs import train_source
from urt_jax.run_settings import check_directory, settings_of
from urt_jax.sharding.init import init_model
from urt_jax.sharding.mesh import (
    batch_ways,
    initialize_distributed,
    make_mesh,
    wait_for_writer,
    writes_here,
)
from urt_jax.train.checkpoint import Checkpointer
from urt_jax.train.loop import run_steps
from urt_jax.train.metrics import MetricsLogger
from urt_jax.train.sft import SFTTrainer

log = logging.getLogger(__name__)


def load_model(cfg: RunConfig, mesh, hf_dir: str | None = None):
    """The starting model: an HF directory (loaded into its shards) or a random init."""
    hf_dir = hf_dir or cfg.model.hf_dir
    if hf_dir:
        return from_pretrained(
            hf_dir,
            dtype=cfg.model.dtype,
            mesh=mesh,
            remat=cfg.model.remat,
            kernels=cfg.model.kernels,
        )
    if not cfg.model.config:
        raise ValueError("model: set model.hf_dir or model.config")
    return init_model(
        Qwen25VLConfig.from_yaml(cfg.model.config),
        cfg.model.dtype,
        cfg.model.remat,
        cfg.seed,
        mesh,
        kernels=cfg.model.kernels,
    )


def run_sft(
    cfg: RunConfig,
    out_dir: str,
    train_spec: str | None = None,
    hf_dir: str | None = None,
    data_root: str | None = None,
) -> dict:
    """Trains for train.max_steps optimiser steps on ``train_spec`` (default: data.train, the
    synthetic task generated if need be) from ``hf_dir`` (default: model.hf_dir, else a random
    init of model.config), resuming from the newest complete checkpoint in {out_dir}/checkpoints
    when it was made with the same settings; writes metrics and, at the end, {out_dir}/hf with
    the tokenizer and processor files."""
    hf_dir = hf_dir or cfg.model.hf_dir
    if train_spec is None:
        train_spec, data_root = train_source(cfg)
    initialize_distributed(cfg.mesh)
    settings = settings_of(
        cfg, ("seed", "model", "data", "train"), inputs={"train": train_spec, "model": hf_dir}
    )
    check_directory(out_dir, settings, "an SFT run", writes_here())
    mesh = make_mesh(cfg.mesh)
    model = load_model(cfg, mesh, hf_dir)
    data, train = cfg.data, cfg.train
    n_proc = jax.process_count()
    ways = batch_ways(mesh)
    if data.batch_size % ways or data.batch_size % n_proc:
        raise ValueError(
            f"data.batch_size {data.batch_size} must divide by data*fsdp = "
            f"{ways} and by the {n_proc} processes"
        )
    builder = builder_from_config(data, model.config, cfg.seed, model_dir=hf_dir)
    records = open_records(
        train_spec, data_root or data.data_root, data.tfds_data_dir, data.skip_invalid
    )
    options = PipelineOptions(
        batch_size=data.batch_size // n_proc,
        seed=cfg.seed,
        num_epochs=None,
        buckets=Buckets(lengths=tuple(data.bucket_lengths)),
    )
    dataset = make_dataset(records, builder, model.config, options, builder.chat.pad_token_id)
    trainer = SFTTrainer(model, mesh, train, train.max_steps, cfg.seed)
    del model
    log.info(
        "SFT: %d trainable, %d frozen parameters; mesh %s",
        trainer.num_trainable,
        trainer.num_frozen,
        dict(mesh.shape),
    )
    ckpt = Checkpointer(
        os.path.join(out_dir, "checkpoints"),
        train.checkpoint_every,
        train.keep_checkpoints,
        train.async_checkpoint,
    )
    iterator = iter(dataset)
    start = 0
    restored = ckpt.restore_latest(trainer.abstract_state())
    if restored is not None:
        start, trainer.state, data_state = restored
        iterator.set_state(data_state)
        log.info("resumed from step %d", start)
    logger = MetricsLogger(
        out_dir, train.max_steps, start, progress=train.progress, enabled=writes_here()
    )

    def one_step(step: int) -> dict:
        return trainer.step([next(iterator) for _ in range(train.grad_accum)])

    last = run_steps(
        start,
        train.max_steps,
        one_step,
        lambda step: (trainer.state, iterator.get_state()),
        ckpt,
        logger,
        train.log_every,
    )
    export_model(trainer.model(), os.path.join(out_dir, "hf"), hf_dir, builder.chat)
    return {"steps": train.max_steps, "resumed_from": start, "final": last}


def export_model(model, out_dir: str, source_dir: str | None, processor) -> None:
    """The trained model as an HF directory with the tokenizer and processor files: the source
    checkpoint's, or for a randomly initialised model those of ``processor``."""
    save_pretrained(model, out_dir, source_dir=source_dir)
    if writes_here() and not has_tokenizer(out_dir):
        processor.save_pretrained(out_dir)
    wait_for_writer(f"processor files {out_dir}")

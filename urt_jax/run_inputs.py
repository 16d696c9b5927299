"""What a run reads: its data (the configured files, or the synthetic task generated into
{output_dir}/data the first time any command of the run needs it, ``data.train: synthetic``),
and a model with its example builder to generate with."""

from __future__ import annotations

import os
from collections.abc import Sequence

from urt_jax.config import RunConfig, RunConfigError
from urt_jax.data.records import PreferenceRecord
from urt_jax.run_settings import check_directory, settings_of

SYNTHETIC = "synthetic"


def synthetic_dir(cfg: RunConfig) -> str:
    return os.path.join(os.path.abspath(cfg.output_dir), "data")


def ensure_synthetic(cfg: RunConfig) -> str:
    """Generates the synthetic task into {output_dir}/data unless it is there (made with the same
    settings: a directory made with others is refused, naming them); returns the directory."""
    from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
    from urt_jax.sharding.mesh import wait_for_writer, writes_here

    out = synthetic_dir(cfg)
    s = cfg.data.synthetic
    check_directory(
        out, settings_of(cfg, ("seed", "data.synthetic")), "synthetic data", writes_here()
    )
    if writes_here() and not os.path.exists(os.path.join(out, "heldout.jsonl")):
        write_synthetic(
            out,
            s.n_train,
            s.n_heldout,
            cfg.seed,
            SyntheticConfig(
                image_size=s.image_size,
                num_frames=s.num_frames,
                pointwise_fraction=s.pointwise_fraction,
                trace=s.trace,
            ),
        )
    wait_for_writer(f"synthetic data {out}")
    return out


def train_source(cfg: RunConfig) -> tuple[str, str | None]:
    """(data spec, media root) of the training data; the synthetic task is generated if needed."""
    if cfg.data.train == SYNTHETIC:
        root = ensure_synthetic(cfg)
        return os.path.join(root, "train.jsonl"), root
    return cfg.data.train, cfg.data.data_root


def heldout_source(cfg: RunConfig) -> tuple[str, str | None]:
    """(data spec, media root) of the held-out data: data.heldout, else the synthetic task's."""
    if cfg.data.heldout is not None:
        return cfg.data.heldout, cfg.data.data_root
    if cfg.data.train == SYNTHETIC:
        root = ensure_synthetic(cfg)
        return os.path.join(root, "heldout.jsonl"), root
    raise RunConfigError("data.heldout: not set (the held-out preference set to evaluate on)")


def train_data_root(cfg: RunConfig) -> str:
    """The directory training media paths are relative to: the synthetic task's, else
    data.data_root, else the training file's directory."""
    spec, root = train_source(cfg)
    return root or os.path.dirname(os.path.abspath(spec))


def open_source(cfg: RunConfig, spec: str, root: str | None) -> Sequence[PreferenceRecord]:
    from urt_jax.data.sources import open_records

    d = cfg.data
    return open_records(spec, root, d.tfds_data_dir, d.skip_invalid)


def train_records(cfg: RunConfig) -> Sequence[PreferenceRecord]:
    return open_source(cfg, *train_source(cfg))


def heldout_records(cfg: RunConfig) -> Sequence[PreferenceRecord]:
    return open_source(cfg, *heldout_source(cfg))


def heldout_items(cfg: RunConfig) -> tuple[Sequence[PreferenceRecord], list[str]]:
    """The held-out records that can be judged, and an error (file, line, what is wrong) for
    each that cannot: ``urt-jax eval`` judges the first and reports the second."""
    spec, root = heldout_source(cfg)
    if spec.startswith("tfds:"):  # validated when the dataset was written
        return open_source(cfg, spec, root), []
    from urt_jax.data.pipeline import read_checked

    good, bad = read_checked(spec, root)
    return good, [str(e) for e in bad]


def first_records(records: Sequence, limit: int | None) -> list:
    """The first ``limit`` records (all of them when limit is None)."""
    n = len(records) if limit is None else min(limit, len(records))
    return [records[i] for i in range(n)]


def example_builder(cfg: RunConfig, model_dir: str, include_reply: bool = True):
    """The example builder of the model in ``model_dir`` (its tokenizer, chat template and pixel
    settings, as the data section overrides them)."""
    from urt_jax.data.examples import builder_from_config
    from urt_jax.model.config import Qwen25VLConfig

    config = Qwen25VLConfig.from_hf_file(model_dir)
    return builder_from_config(cfg.data, config, cfg.seed, include_reply, model_dir=model_dir)


def generation_setup(cfg: RunConfig, model_dir: str):
    """(model, prompt-only example builder) for judging or sampling with the model in model_dir.

    With ``mesh.distributed`` (a pod slice, every host running the same command) the model is
    loaded onto the configured mesh, so the whole slice generates, prompts split over
    data x fsdp when a chunk's rows divide over it; each host gets every completion back and
    process 0 writes the outputs. Otherwise it runs on one device."""
    from urt_jax.model.hf import from_pretrained
    from urt_jax.sharding.mesh import initialize_distributed, make_mesh

    mesh = None
    if cfg.mesh.distributed:
        initialize_distributed(cfg.mesh)
        mesh = make_mesh(cfg.mesh)
    model = from_pretrained(model_dir, dtype=cfg.model.dtype, mesh=mesh, kernels=cfg.model.kernels)
    return model, example_builder(cfg, model_dir, include_reply=False)

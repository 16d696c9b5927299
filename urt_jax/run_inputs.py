"""Where a run's data comes from: the configured files, or the synthetic task generated into
{output_dir}/data the first time any command of the run needs it (``data.train: synthetic``)."""

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

"""What a stage ran with, so that a rerun with other settings never silently reuses its results.

A stage's settings are the config keys its results depend on, flattened to dotted names
(``train.max_steps``); keys that change how a run executes but not what it computes (the mesh,
logging and checkpoint cadence, the output directory) are left out. ``urt-jax run`` keeps them per
stage in report.json; ``urt-jax sft`` and ``urt-jax grpo`` keep them in {output_dir}/settings.json
beside their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from urt_jax.atomic import write_text

# Keys that do not change what a stage computes.
EXECUTION_ONLY = (
    "output_dir",
    "mesh",
    "model.remat",  # recomputes the same activations
    "model.kernels",  # the same attention, another implementation
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.async_checkpoint",
)

# The config keys (prefixes) each stage of `urt-jax run` depends on; what an earlier stage
# depends on reaches the later ones through that stage's outputs.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "init": (
        "seed",
        "model",
        "data.tokenizer",
        "data.min_pixels",
        "data.max_pixels",
        "data.max_frames",
    ),
    "data": ("seed", "data"),
    "forward": ("data",),
    "eval": ("seed", "eval", "data", "model.dtype"),
    "sft": ("seed", "train", "data", "model"),
    "sample": ("seed", "rejection", "data", "model.dtype"),
    "rs_sft": ("seed", "train", "rejection.sft_max_steps", "rejection.sft_learning_rate", "data"),
    "grpo": ("seed", "grpo", "train", "data", "model"),
    "export": ("data",),
}


class SettingsChanged(ValueError):
    """Results on disk were made with other settings than the config's."""


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A (nested) config dataclass as {dotted key: value}."""
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(obj) if isinstance(obj, tuple) else obj}


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def settings_of(cfg: Any, prefixes: Iterable[str], **extra: Any) -> dict[str, Any]:
    """The config keys under ``prefixes`` (execution-only keys left out), plus ``extra``."""
    prefixes = tuple(prefixes)
    flat = {
        k: v
        for k, v in flatten(cfg).items()
        if _matches(k, prefixes) and not _matches(k, EXECUTION_ONLY)
    }
    return {**flat, **extra}


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every key that differs (missing on one side included)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def describe(lines: list[str], limit: int = 6) -> str:
    shown = "; ".join(lines[:limit])
    return shown + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")


def check_directory(
    out_dir: str, settings: Mapping[str, Any], what: str, writer: bool = True
) -> None:
    """Records ``settings`` in {out_dir}/settings.json (``writer``: this process writes), or,
    where the directory already holds results made with other settings, refuses to continue
    from them."""
    path = os.path.join(out_dir, "settings.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except ValueError:
            old = None
        if old is None:
            raise SettingsChanged(f"{path}: unreadable; delete {out_dir} to start {what} afresh")
        diff = changes(old, json.loads(json.dumps(settings, default=str)))
        if diff:
            raise SettingsChanged(
                f"{out_dir} holds {what} run with other settings ({describe(diff)}); "
                f"continuing from it would mix the two. Delete {out_dir} to start afresh, or "
                "choose another output_dir"
            )
        return
    if not writer:
        return
    os.makedirs(out_dir, exist_ok=True)
    write_text(path, json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")

"""Typed run configs, loaded from YAML with ``key=value`` overrides (dotted keys, YAML values).

Unknown keys are errors, naming the file and the key: a typo never falls back to a default.
A config file, and the model config, checkpoint, templates and tokenizer paths inside it, are
looked up as given, then against the config file's directory's parent (configs/model/tiny.yaml
from configs/demo.yaml), then among the files shipped in the package. Data paths are relative to
the working directory; all are made absolute when the config is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from urt_jax.model.attention import KERNELS
from urt_jax.model.layers import DTYPE_NAMES
from urt_jax.model.remat import REMAT_POLICIES
from urt_jax.resources import resolve_input
from urt_jax.sharding.mesh import MeshConfig
from urt_jax.train.grpo_loss import AGGREGATIONS, KL_ESTIMATORS, GRPOLossConfig


class RunConfigError(ValueError):
    pass


@dataclasses.dataclass
class ModelSection:
    # a model config YAML (configs/model/*.yaml) for a randomly initialised model
    config: str | None = None
    # or a Hugging Face Qwen2.5-VL directory to start from (its weights, tokenizer, processor)
    hf_dir: str | None = None
    # parameters and compute: float32, bfloat16, or mixed_bfloat16 (fp32 master weights, bf16
    # compute; the training default on accelerators)
    dtype: str = "float32"
    # activation rematerialisation of every decoder and vision block: none, full (recompute
    # everything: least memory), dots or dots_all (keep matmul outputs)
    remat: str = "none"
    # the attention implementation: "auto" (the backend's), "cpu", "tpu" (Pallas splash
    # attention) or "gpu" (cuDNN flash attention); see urt_jax.model.attention
    kernels: str = "auto"


@dataclasses.dataclass
class SyntheticSection:
    n_train: int = 256  # training items of the generated synthetic task
    n_heldout: int = 64  # held-out items
    image_size: int = 56  # side of the drawn images and video frames, pixels
    num_frames: int = 4  # frames of a drawn video
    pointwise_fraction: float = 0.0  # share of pointwise (scored) items; the rest are pairs
    # teacher traces: "full" (every dimension, totals) or "brief" (see urt_jax.data.synthetic)
    trace: str = "full"


@dataclasses.dataclass
class DataSection:
    train: str = "synthetic"  # "synthetic", a JSONL/JSON file, a dataset YAML, tfds:NAME[/SPLIT]
    heldout: str | None = None  # same forms; with "synthetic", the generated held-out split
    data_root: str | None = None  # media paths are relative to it (default: the file's dir)
    tfds_data_dir: str | None = None  # where tfds: datasets live (default: TFDS's own)
    # the prompt templates (YAML): the task instructions a record's fields are rendered into
    templates: str = "configs/templates/unifiedreward_think.yaml"
    # an HF tokenizer dir; default: the model's (model.hf_dir), else the shipped demo tokenizer
    tokenizer: str | None = None
    max_length: int = 2048  # tokens of a training sample (prompt, media and reply); longer: error
    # image and video-frame pixel limits; default: the model's preprocessor_config.json (the
    # Hub's: 3136 and 12845056). The released Qwen-path training used max_pixels 147456 (384^2).
    min_pixels: int | None = None
    max_pixels: int | None = None  # see min_pixels
    max_frames: int = 8  # frames sampled evenly from a video
    # chance that a pairwise training item is shown with its candidates swapped (verdict flipped)
    swap_probability: float = 0.0
    skip_invalid: bool = False  # drop invalid records (bad fields or media), logged; else stop
    batch_size: int = 4  # rows of a micro-batch, over all processes
    # padded lengths of a batch (its longest row, rounded up): one compiled program each
    bucket_lengths: list[int] = dataclasses.field(
        default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192]
    )
    synthetic: SyntheticSection = dataclasses.field(default_factory=SyntheticSection)


@dataclasses.dataclass
class TrainSection:
    max_steps: int = 100  # optimiser steps
    learning_rate: float = 2.5e-6  # peak learning rate (the released SFT value)
    warmup_ratio: float = 0.03  # share of max_steps of linear warm-up, then a cosine decay
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate * min_lr_ratio
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    adam_b1: float = 0.9  # AdamW's first-moment decay
    adam_b2: float = 0.999  # AdamW's second-moment decay
    adam_eps: float = 1e-8  # AdamW's epsilon
    max_grad_norm: float = 1.0  # gradients clipped to this global norm
    grad_accum: int = 1  # micro-batches per optimiser step
    freeze_vision: bool = True  # vision tower and merger frozen, as released
    nonfinite: str = "skip"  # a NaN/Inf loss or gradient: "skip" the update or "stop"
    log_every: int = 1  # steps between metrics lines (and at the last step)
    checkpoint_every: int = 50  # steps between checkpoints (and at the last step)
    keep_checkpoints: int = 3  # newest checkpoints kept
    async_checkpoint: bool = True  # save in the background while training goes on
    progress: bool = True  # a progress bar with ETA on a terminal


@dataclasses.dataclass
class EvalSection:
    # null: the release's length for each item's task (512 image generation, 1024 video
    # generation and understanding, 4096 image understanding)
    max_new_tokens: int | None = None
    batch_size: int = 8  # prompts judged at once
    # "both_orders": every pairwise item judged in both candidate orders, the verdict read from
    # <answer>; "release": imported benchmark items scored as the release's scripts score them
    protocol: str = "both_orders"
    swap: bool = True  # both_orders: judge pairwise items in both candidate orders
    order_seed: int = 0  # release: the seed of the order draws (0: the release's VL-RewardBench)
    mode: str = "cot"  # "cot" (think, then answer) | "direct" (answer only)
    max_items: int | None = None  # evaluate at most this many held-out items


@dataclasses.dataclass
class RejectionSection:
    samples_per_prompt: int = 4  # K samples of each training prompt (not published: a setting)
    max_new_tokens: int = 256  # tokens of a sample
    temperature: float = 1.0  # sampling temperature (0: greedy)
    top_p: float = 0.95  # nucleus sampling mass
    batch_size: int = 4  # prompts sampled at once
    grpo_prompts: str = "any_wrong"  # which prompts go to GRPO: "any_wrong" | "all_wrong"
    require_format: bool = True  # a correct sample must also be well formed to be kept
    max_prompts: int | None = None  # sample at most this many training prompts
    sft_max_steps: int | None = None  # steps of the second SFT (rs_sft); default train.max_steps
    # peak learning rate of the second SFT; default train.learning_rate. It starts from a trained
    # model on a few hundred of its own samples, where the cold start's rate overfits them.
    sft_learning_rate: float | None = None


@dataclasses.dataclass
class GRPOSection(GRPOLossConfig):
    """GRPO on the prompts rejection sampling answered wrongly; released values as defaults. The
    objective's settings are ``GRPOLossConfig``'s (beta, clipping, KL estimator, aggregation,
    advantages); optimiser settings other than the learning rate, warm-up and step count come
    from ``train``."""

    data: str | None = None  # GRPO prompts (any data format); default: rejection sampling's
    max_steps: int = 100  # generation batches
    prompts_per_step: int = 8  # prompts of a generation batch
    num_generations: int = 8  # G: completions sampled per prompt
    num_iterations: int = 1  # policy updates per generation batch (mu)
    # rows of one forward/backward pass of the update (gradients summed over the generation
    # batch's micro-batches, then one optimiser step); null: the whole generation batch at once
    micro_batch_rows: int | None = None
    max_new_tokens: int = 2048  # tokens of a completion
    temperature: float = 1.0  # sampling temperature
    top_p: float = 0.95  # nucleus sampling mass
    learning_rate: float = 1e-6  # peak learning rate
    warmup_ratio: float = 0.0  # share of the updates of linear warm-up
    # reward functions (urt_jax.rewards registry names, or {name: weight} mappings)
    rewards: list[Any] = dataclasses.field(default_factory=lambda: ["format", "accuracy"])


@dataclasses.dataclass
class RunConfig:
    output_dir: str = "runs/demo"  # where a run writes everything (stages in subdirectories)
    seed: int = 0  # model init, data order, sampling
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    rejection: RejectionSection = dataclasses.field(default_factory=RejectionSection)
    grpo: GRPOSection = dataclasses.field(default_factory=GRPOSection)
    # what `urt-jax run` does, in order (urt_jax.pipeline.STAGES)
    stages: list[str] = dataclasses.field(
        default_factory=lambda: ["init", "data", "forward", "export"]
    )


def options_from(cls: type, section: Any, **given: Any) -> Any:
    """An options dataclass built from the config section's fields of the same names, with
    ``given`` added or taking precedence (e.g. ``seed``, which lives at the top level)."""
    shared = {f.name for f in dataclasses.fields(cls)} & {
        f.name for f in dataclasses.fields(section)
    }
    return cls(**{n: getattr(section, n) for n in shared if n not in given}, **given)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise RunConfigError(f"override {dotted!r}: {k!r} is not a section")
    d[keys[-1]] = value


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise RunConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RunConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _check_type(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except RunConfigError:
                continue
        raise RunConfigError(f"{where}: expected {hint}, found {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise RunConfigError(f"{where}: expected null, found {value!r}")
    if origin in (list, Sequence):
        if not isinstance(value, list):
            raise RunConfigError(f"{where}: expected a list, found {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(hint, type) and not isinstance(value, hint):
        raise RunConfigError(f"{where}: expected {hint.__name__}, found {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low`` <= value (< with ``open_low``), value
    <= ``high`` (< with ``open_high``); None leaves that side unbounded. Null is allowed where
    the setting's type allows it (it then means the documented default)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"value {'>' if self.open_low else '>='} {self.low:g}"
        high = f" {'<' if self.open_high else '<='} {self.high:g}"
        if self.low is None:
            return f"value{high}"
        return f"{self.low:g} {'<' if self.open_low else '<='} value{high}"


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, open_low=True)
FRACTION = Range(0, 1)  # 0 <= value <= 1
FRACTION_BELOW_1 = Range(0, 1, open_high=True)

# Every numeric setting's allowed values, checked when a config loads.
RANGES: dict[tuple[str, str], Range] = {
    ("", "seed"): AT_LEAST_0,
    ("data", "max_length"): AT_LEAST_1,
    ("data", "min_pixels"): AT_LEAST_1,
    ("data", "max_pixels"): AT_LEAST_1,
    ("data", "max_frames"): AT_LEAST_1,
    ("data", "swap_probability"): FRACTION,
    ("data", "batch_size"): AT_LEAST_1,
    ("data", "bucket_lengths"): AT_LEAST_1,
    ("data.synthetic", "n_train"): AT_LEAST_1,
    ("data.synthetic", "n_heldout"): AT_LEAST_0,
    ("data.synthetic", "image_size"): Range(28),
    ("data.synthetic", "num_frames"): AT_LEAST_1,
    ("data.synthetic", "pointwise_fraction"): FRACTION,
    ("train", "max_steps"): AT_LEAST_1,
    ("train", "learning_rate"): POSITIVE,
    ("train", "warmup_ratio"): FRACTION_BELOW_1,
    ("train", "min_lr_ratio"): FRACTION,
    ("train", "weight_decay"): AT_LEAST_0,
    ("train", "adam_b1"): FRACTION_BELOW_1,
    ("train", "adam_b2"): FRACTION_BELOW_1,
    ("train", "adam_eps"): POSITIVE,
    ("train", "max_grad_norm"): POSITIVE,
    ("train", "grad_accum"): AT_LEAST_1,
    ("train", "log_every"): AT_LEAST_1,
    ("train", "checkpoint_every"): AT_LEAST_1,
    ("train", "keep_checkpoints"): AT_LEAST_1,
    ("eval", "max_new_tokens"): AT_LEAST_1,
    ("eval", "batch_size"): AT_LEAST_1,
    ("eval", "order_seed"): AT_LEAST_0,
    ("eval", "max_items"): AT_LEAST_1,
    ("rejection", "samples_per_prompt"): AT_LEAST_1,
    ("rejection", "max_new_tokens"): AT_LEAST_1,
    ("rejection", "temperature"): AT_LEAST_0,
    ("rejection", "top_p"): Range(0, 1, open_low=True),
    ("rejection", "batch_size"): AT_LEAST_1,
    ("rejection", "max_prompts"): AT_LEAST_1,
    ("rejection", "sft_max_steps"): AT_LEAST_1,
    ("rejection", "sft_learning_rate"): POSITIVE,
    ("grpo", "max_steps"): AT_LEAST_1,
    ("grpo", "prompts_per_step"): AT_LEAST_1,
    ("grpo", "num_generations"): Range(2),  # a group needs two completions to compare
    ("grpo", "num_iterations"): AT_LEAST_1,
    ("grpo", "micro_batch_rows"): AT_LEAST_1,
    ("grpo", "max_new_tokens"): AT_LEAST_1,
    ("grpo", "temperature"): POSITIVE,
    ("grpo", "top_p"): Range(0, 1, open_low=True),
    ("grpo", "learning_rate"): POSITIVE,
    ("grpo", "warmup_ratio"): FRACTION_BELOW_1,
    ("grpo", "beta"): AT_LEAST_0,
    ("grpo", "clip_eps_low"): FRACTION_BELOW_1,
    ("grpo", "clip_eps_high"): AT_LEAST_0,
    ("grpo", "kl_clamp"): POSITIVE,
    ("grpo", "advantage_eps"): AT_LEAST_0,
}
# -1 (every device the other axes leave) or a positive size
MESH_AXES = ("data", "fsdp", "tensor")

# Every setting with a fixed set of values.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "dtype"): (*DTYPE_NAMES, "mixed_bfloat16", "mixed_bf16"),
    ("model", "remat"): ("none", *REMAT_POLICIES),
    ("model", "kernels"): KERNELS,
    ("data.synthetic", "trace"): ("full", "brief"),
    ("train", "nonfinite"): ("skip", "stop"),
    ("eval", "protocol"): ("both_orders", "release"),
    ("eval", "mode"): ("cot", "direct"),
    ("rejection", "grpo_prompts"): ("any_wrong", "all_wrong"),
    ("grpo", "kl_estimator"): tuple(KL_ESTIMATORS),
    ("grpo", "aggregation"): tuple(AGGREGATIONS),
    ("grpo", "advantage_std"): ("sample", "population"),
    ("grpo", "advantage_scale"): ("group", "batch", "none"),
}


def _section(cfg: RunConfig, dotted: str) -> Any:
    for name in filter(None, dotted.split(".")):
        cfg = getattr(cfg, name)
    return cfg


def check_values(cfg: RunConfig, where: str) -> None:
    """Every setting of ``RANGES``, ``CHOICES`` and the mesh within its allowed values; the
    first that is not raises a RunConfigError naming the file, the key, the value and what is
    allowed."""

    def key(section: str, attr: str) -> str:
        return f"{section}.{attr}" if section else attr

    for (section, attr), allowed in RANGES.items():
        value = getattr(_section(cfg, section), attr)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not allowed.holds(v):
                raise RunConfigError(
                    f"{where}: {key(section, attr)}={value!r} is out of range: allowed {allowed}"
                )
    for (section, attr), choices in CHOICES.items():
        value = getattr(_section(cfg, section), attr)
        if value not in choices:
            raise RunConfigError(
                f"{where}: {key(section, attr)}={value!r} is not one of {list(choices)}"
            )
    for axis in MESH_AXES:
        value = getattr(cfg.mesh, axis)
        if value != -1 and value < 1:
            raise RunConfigError(
                f"{where}: mesh.{axis}={value!r}: allowed -1 (every device the other axes "
                "leave) or a size >= 1"
            )


def load_run_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    path = resolve_input(os.fspath(path))
    if not os.path.isfile(path):
        raise RunConfigError(f"{path}: config file not found")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise RunConfigError(f"{path}: invalid YAML: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise RunConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    cfg = _build(RunConfig, data, path)
    check_values(cfg, path)
    base = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    for section, attr in (
        ("model", "config"),
        ("model", "hf_dir"),
        ("data", "templates"),
        ("data", "tokenizer"),
    ):
        value = getattr(getattr(cfg, section), attr)
        if value:
            found = resolve_input(value, base)
            setattr(getattr(cfg, section), attr, _canonical(found))
    for section, attr in (
        ("data", "train"),
        ("data", "heldout"),
        ("data", "data_root"),
        ("data", "tfds_data_dir"),
        ("grpo", "data"),
    ):
        value = getattr(getattr(cfg, section), attr)
        if value and value != "synthetic" and not value.startswith("tfds:"):
            setattr(getattr(cfg, section), attr, os.path.abspath(os.path.expanduser(value)))
    return cfg


def _canonical(path: str) -> str:
    """An existing path without symbolic links (so that the same file is named the same way
    from any directory, as the settings a run records compare it); others as given."""
    return os.path.realpath(path) if os.path.exists(path) else path

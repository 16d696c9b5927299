"""Qwen2.5-VL model configuration, read from and written to Hugging Face ``config.json``.

Two on-disk layouts exist: the flat 4.x layout of the published Hub checkpoints (text fields at the
top level, ``rope_scaling={"type": "mrope", ...}``) and the nested 5.x layout (``text_config``,
``rope_parameters``). Both are read; the flat Hub layout is written, which every transformers
release (4.x and 5.x) loads. Every architectural field must be present in the file: the class
defaults of transformers are not the checkpoint values (its vision defaults are 7B-sized with
``tokens_per_second`` 4), so nothing is filled in silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

SUPPORTED_MODEL_TYPE = "qwen2_5_vl"
SUPPORTED_ARCHITECTURES = ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel")
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")
# Not stored in any Qwen2.5-VL config.json; transformers hard-codes 10000 for the vision 2D RoPE.
VISION_ROPE_THETA = 10000.0


class ConfigError(ValueError):
    """A config that is missing a field, has an unsupported value, or is inconsistent."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int
    out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    tokens_per_second: float
    hidden_act: str = "silu"
    rope_theta: float = VISION_ROPE_THETA
    norm_eps: float = 1e-6  # fixed in transformers, not read from config.json

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened pixel patch row: C * T * p * p (1176 for Qwen2.5-VL)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens (112 // 2 // 14 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # the dtype the weights were stored in (torch_dtype in config.json)

    # ------------------------------------------------------------------ validation
    def validate(self, source: str = "config") -> Qwen25VLConfig:
        t, v = self.text, self.vision

        def bad(field: str, expected: str, found: Any) -> ConfigError:
            return ConfigError(f"{source}: field '{field}': expected {expected}, found {found!r}")

        for name, value in dataclasses.asdict(t).items():
            if (
                name
                in (
                    "vocab_size",
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                )
                and value <= 0
            ):
                raise bad(f"text_config.{name}", "a positive integer", value)
        if t.hidden_size % t.num_attention_heads:
            raise bad(
                "text_config.num_attention_heads",
                f"a divisor of hidden_size {t.hidden_size}",
                t.num_attention_heads,
            )
        if t.num_attention_heads % t.num_key_value_heads:
            raise bad(
                "text_config.num_key_value_heads",
                f"a divisor of num_attention_heads {t.num_attention_heads}",
                t.num_key_value_heads,
            )
        if t.head_dim % 2:
            raise bad("text_config.hidden_size", "an even head_dim (hidden/heads)", t.head_dim)
        if len(t.mrope_section) != 3 or sum(t.mrope_section) * 2 != t.head_dim:
            raise bad(
                "text_config.rope_parameters.mrope_section",
                f"3 sections summing to head_dim/2 = {t.head_dim // 2}",
                f"{list(t.mrope_section)} (sum {sum(t.mrope_section)})",
            )
        if t.use_sliding_window:
            raise bad(
                "text_config.use_sliding_window",
                "false (Qwen2.5-VL checkpoints never use it; not implemented)",
                True,
            )
        for act_field, act in (
            ("text_config.hidden_act", t.hidden_act),
            ("vision_config.hidden_act", v.hidden_act),
        ):
            if act not in SUPPORTED_ACTIVATIONS:
                raise bad(act_field, f"one of {SUPPORTED_ACTIVATIONS}", act)
        if v.hidden_size % v.num_heads:
            raise bad(
                "vision_config.num_heads", f"a divisor of hidden_size {v.hidden_size}", v.num_heads
            )
        if v.head_dim % 4:
            raise bad(
                "vision_config.hidden_size",
                "a vision head_dim divisible by 4 (2D RoPE)",
                v.head_dim,
            )
        if v.out_hidden_size != t.hidden_size:
            raise bad(
                "vision_config.out_hidden_size",
                f"equal to text hidden_size {t.hidden_size}",
                v.out_hidden_size,
            )
        if v.window_merged < 1:
            raise bad(
                "vision_config.window_size",
                f">= spatial_merge_size * patch_size = {v.spatial_merge_size * v.patch_size}",
                v.window_size,
            )
        for i in v.fullatt_block_indexes:
            if not 0 <= i < v.depth:
                raise bad(
                    "vision_config.fullatt_block_indexes",
                    f"indexes in [0, {v.depth})",
                    list(v.fullatt_block_indexes),
                )
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            tid = getattr(self, name)
            if not 0 <= tid < t.vocab_size:
                raise bad(name, f"a token id < vocab_size {t.vocab_size}", tid)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise bad("torch_dtype", "float32, bfloat16 or float16", self.dtype)
        return self

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> Qwen25VLConfig:
        model_type = d.get("model_type")
        if model_type != SUPPORTED_MODEL_TYPE:
            raise ConfigError(
                f"{source}: field 'model_type': expected '{SUPPORTED_MODEL_TYPE}', "
                f"found {model_type!r} (unknown architecture)"
            )
        archs = d.get("architectures")
        if archs is not None and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise ConfigError(
                f"{source}: field 'architectures': expected one of "
                f"{list(SUPPORTED_ARCHITECTURES)}, found {archs!r}"
            )
        nested = isinstance(d.get("text_config"), Mapping)
        td: Mapping[str, Any] = d["text_config"] if nested else d
        tprefix = "text_config." if nested else ""
        if "vision_config" not in d:
            raise ConfigError(f"{source}: missing field 'vision_config'")
        vd: Mapping[str, Any] = d["vision_config"]

        def req(m: Mapping[str, Any], key: str, prefix: str, *alts: str) -> Any:
            for k in (key, *alts):
                if k in m and m[k] is not None:
                    return m[k]
            raise ConfigError(f"{source}: missing field '{prefix}{key}'")

        rope = td.get("rope_parameters") or td.get("rope_scaling") or d.get("rope_scaling")
        if not isinstance(rope, Mapping) or "mrope_section" not in rope:
            raise ConfigError(
                f"{source}: missing field '{tprefix}rope_parameters.mrope_section' "
                "(or rope_scaling.mrope_section in the flat layout)"
            )
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ConfigError(
                f"{source}: field '{tprefix}rope_parameters.rope_type': expected "
                f"'default' or 'mrope', found {rope_type!r}"
            )
        rope_theta = rope.get("rope_theta", td.get("rope_theta"))
        if rope_theta is None:
            raise ConfigError(f"{source}: missing field '{tprefix}rope_theta'")

        text = TextConfig(
            vocab_size=int(req(td, "vocab_size", tprefix)),
            hidden_size=int(req(td, "hidden_size", tprefix)),
            intermediate_size=int(req(td, "intermediate_size", tprefix)),
            num_hidden_layers=int(req(td, "num_hidden_layers", tprefix)),
            num_attention_heads=int(req(td, "num_attention_heads", tprefix)),
            num_key_value_heads=int(req(td, "num_key_value_heads", tprefix)),
            max_position_embeddings=int(req(td, "max_position_embeddings", tprefix)),
            rms_norm_eps=float(req(td, "rms_norm_eps", tprefix)),
            rope_theta=float(rope_theta),
            mrope_section=tuple(int(s) for s in rope["mrope_section"]),
            hidden_act=str(req(td, "hidden_act", tprefix)),
            attention_dropout=float(td.get("attention_dropout", 0.0) or 0.0),
            use_sliding_window=bool(td.get("use_sliding_window", False)),
            sliding_window=td.get("sliding_window"),
            max_window_layers=td.get("max_window_layers"),
            bos_token_id=td.get("bos_token_id", d.get("bos_token_id")),
            eos_token_id=td.get("eos_token_id", d.get("eos_token_id")),
            pad_token_id=td.get("pad_token_id", d.get("pad_token_id")),
        )
        vrope = vd.get("rope_parameters") or {}
        vision = VisionConfig(
            depth=int(req(vd, "depth", "vision_config.")),
            hidden_size=int(req(vd, "hidden_size", "vision_config.")),
            intermediate_size=int(req(vd, "intermediate_size", "vision_config.")),
            num_heads=int(req(vd, "num_heads", "vision_config.")),
            in_channels=int(req(vd, "in_channels", "vision_config.", "in_chans")),
            patch_size=int(req(vd, "patch_size", "vision_config.")),
            temporal_patch_size=int(req(vd, "temporal_patch_size", "vision_config.")),
            spatial_merge_size=int(req(vd, "spatial_merge_size", "vision_config.")),
            window_size=int(req(vd, "window_size", "vision_config.")),
            out_hidden_size=int(req(vd, "out_hidden_size", "vision_config.")),
            fullatt_block_indexes=tuple(
                int(i) for i in req(vd, "fullatt_block_indexes", "vision_config.")
            ),
            tokens_per_second=float(req(vd, "tokens_per_second", "vision_config.")),
            hidden_act=str(req(vd, "hidden_act", "vision_config.")),
            rope_theta=float(vrope.get("rope_theta", VISION_ROPE_THETA)),
        )
        tie = d.get("tie_word_embeddings")
        if tie is None and nested:
            tie = td.get("tie_word_embeddings")
        dtype = d.get("torch_dtype") or d.get("dtype") or td.get("dtype") or "float32"
        cfg = cls(
            text=text,
            vision=vision,
            image_token_id=int(req(d, "image_token_id", "")),
            video_token_id=int(req(d, "video_token_id", "")),
            vision_start_token_id=int(req(d, "vision_start_token_id", "")),
            vision_end_token_id=int(req(d, "vision_end_token_id", "")),
            tie_word_embeddings=bool(tie),
            dtype=str(dtype),
        )
        return cfg.validate(source)

    @classmethod
    def from_hf_file(cls, path: str | os.PathLike) -> Qwen25VLConfig:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"{path}: config.json not found")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        return cls.from_hf_dict(d, source=path)

    def to_hf_dict(self) -> dict[str, Any]:
        """The flat Hub layout (as in Qwen/Qwen2.5-VL-*-Instruct), loadable by 4.x and 5.x."""
        t, v = self.text, self.vision
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": SUPPORTED_MODEL_TYPE,
            "attention_dropout": t.attention_dropout,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            **({"pad_token_id": t.pad_token_id} if t.pad_token_id is not None else {}),
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "hidden_act": t.hidden_act,
            "hidden_size": t.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "max_window_layers": t.max_window_layers
            if t.max_window_layers is not None
            else t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "sliding_window": t.sliding_window if t.sliding_window is not None else 32768,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.dtype,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": t.vocab_size,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "vision_config": {
                "model_type": SUPPORTED_MODEL_TYPE,
                "depth": v.depth,
                "hidden_act": v.hidden_act,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_chans": v.in_channels,
                "in_channels": v.in_channels,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "tokens_per_second": _int_if_whole(v.tokens_per_second),
            },
        }

    # ------------------------------------------------------------------ YAML (configs/model/)
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["text"]["mrope_section"] = list(self.text.mrope_section)
        d["vision"]["fullatt_block_indexes"] = list(self.vision.fullatt_block_indexes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model config") -> Qwen25VLConfig:
        d = dict(d)
        try:
            text_d, vision_d = dict(d.pop("text")), dict(d.pop("vision"))
        except KeyError as e:
            raise ConfigError(f"{source}: missing section {e.args[0]!r}") from None
        text = _build(TextConfig, text_d, f"{source}: text")
        vision = _build(VisionConfig, vision_d, f"{source}: vision")
        text = dataclasses.replace(text, mrope_section=tuple(text.mrope_section))
        vision = dataclasses.replace(
            vision, fullatt_block_indexes=tuple(vision.fullatt_block_indexes)
        )
        return _build(cls, {**d, "text": text, "vision": vision}, source).validate(source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Qwen25VLConfig:
        path = os.fspath(path)
        with open(path) as f:
            d = yaml.safe_load(f)
        if not isinstance(d, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(d, source=path)


def _build(cls: type, d: Mapping[str, Any], source: str) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(d))
    if missing:
        raise ConfigError(f"{source}: missing field(s) {missing}")
    return cls(**d)


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x

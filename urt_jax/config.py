"""Typed run configs, loaded from YAML with ``key=value`` overrides (dotted keys, YAML values).

Unknown keys are errors, naming the file and the key: a typo never falls back to a default.
Relative paths inside a config are resolved against the config file's directory's parent
(the repository root for files under configs/), or kept as given when they exist as is.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml


class RunConfigError(ValueError):
    pass


@dataclasses.dataclass
class ModelSection:
    config: str | None = None  # a configs/model/*.yaml for a randomly initialised model
    hf_dir: str | None = None  # or a Hugging Face Qwen2.5-VL directory to start from
    dtype: str = "float32"  # float32 | bfloat16 | mixed_bfloat16
    remat: str = "none"


@dataclasses.dataclass
class RunConfig:
    output_dir: str = "runs/demo"
    seed: int = 0
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    stages: list[str] = dataclasses.field(default_factory=lambda: ["init", "forward", "export"])


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
    if isinstance(hint, type) and not isinstance(value, hint):
        raise RunConfigError(f"{where}: expected {hint.__name__}, found {value!r}")
    return value


def load_run_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    path = os.fspath(path)
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
    base = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    for attr in ("config", "hf_dir"):
        value = getattr(cfg.model, attr)
        if value and not os.path.isabs(value) and not os.path.exists(value):
            setattr(cfg.model, attr, os.path.join(base, value))
    return cfg

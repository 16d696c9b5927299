"""docs/configuration.md, generated from the run config's dataclasses: every key with its type,
default, allowed values (``config.RANGES`` and ``CHOICES``), the value the released training used
(the shipped 7B pod configs) and its meaning (the comment beside or above the field).

    python -m urt_jax.config_reference > docs/configuration.md

``tests/test_config_reference.py`` checks that the file is current and that every key has a
meaning.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import textwrap
import tokenize
import typing
from typing import Any

from urt_jax import config as config_module
from urt_jax.resources import resolve_input

# The released training, stage by stage: where a key's released value is read from.
RELEASED = (
    "configs/pod/qwen2_5_vl_7b_cold_start.yaml",
    "configs/pod/qwen2_5_vl_7b_rejection_sampling.yaml",
    "configs/pod/qwen2_5_vl_7b_grpo.yaml",
)
# Paths and cluster layout: what a user sets for their machine, not a released value.
NOT_RELEASED = ("output_dir", "model.", "data.train", "data.heldout", "data.data_root",
                "data.tfds_data_dir", "data.tokenizer", "data.templates", "grpo.data", "mesh.",
                "stages")  # fmt: skip


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment}: the comment on the field's line, else the comment lines just
    above it (joined), from the class or the dataclass it extends; a docstring is not a
    field's."""
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and base is not object:
            comments.update(_own_field_comments(base))
    return comments


def _own_field_comments(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    names = set(cls.__annotations__)
    above: list[str] = []
    comments: dict[str, str] = {}
    current: str | None = None
    current_line = -1
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if current is not None and tok.start[0] == current_line:
                comments[current] = (comments.get(current, "") + " " + text).strip()
            else:
                above.append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            current, current_line = tok.string, tok.start[0]
            if above:
                comments[current] = " ".join(above)
            above = []
        elif tok.type == tokenize.NL and tok.start[1] == 0 and not tok.line.strip():
            above = []  # a blank line ends a comment block
    return comments


def _sections(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted prefix, dataclass) of the config and of every nested section, in order."""
    out = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _sections(hints[f.name], f"{prefix}{f.name}.")
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _released() -> dict[str, Any]:
    """{dotted key: value} set by the released stages' configs (the first stage that sets it)."""
    import yaml

    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out.setdefault(f"{prefix}{key}", value)

    for path in RELEASED:
        with open(resolve_input(path)) as f:
            walk(yaml.safe_load(f) or {}, "")
    return {
        k: v
        for k, v in out.items()
        if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in NOT_RELEASED)
    }


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    return str(value)


def _allowed(section: str, name: str) -> str:
    key = (section.rstrip("."), name)
    if key in config_module.RANGES:
        return str(config_module.RANGES[key])
    if key in config_module.CHOICES:
        return ", ".join(config_module.CHOICES[key])
    if section == "mesh." and name in config_module.MESH_AXES:
        return "-1 or value >= 1"
    return ""


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args:  # Optional
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + ", or null"
    if typing.get_origin(hint) is list:
        return f"list of {_type_name(args[0])}"
    return "any" if hint is Any else getattr(hint, "__name__", str(hint))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    """The whole of docs/configuration.md."""
    released = _released()
    lines = [
        "# Configuration",
        "",
        "Every key of a run config (`urt-jax run|sft|sample|grpo|eval CONFIG key=value ...`), "
        "generated from `urt_jax/config.py` by `python -m urt_jax.config_reference`. A config "
        "file sets any of them; `key=value` on the command line overrides (dotted keys, YAML "
        "values). Unknown keys and values outside *allowed* are refused when the config loads, "
        "naming the file and the key. *Released* is the value the released training used, as "
        "the shipped 7B pod configs set it (`configs/pod/qwen2_5_vl_7b_*.yaml`); blank where "
        "the release has none (paths, this project's own switches) or uses the default.",
        "",
    ]
    for prefix, cls in _sections(config_module.RunConfig):
        comments = field_comments(cls)
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            key = prefix + f.name
            meaning = comments.get(f.name, "")
            value = released.get(key)
            cells = (
                f"`{key}`",
                _type_name(hints[f.name]),
                f"`{_show(_default(f))}`",
                _allowed(prefix, f.name),
                "" if value is None else f"`{_show(value)}`",
                meaning,
            )
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        if not rows:
            continue
        title = prefix.rstrip(".") or "top level"
        own_doc = cls.__doc__ and not cls.__doc__.startswith(cls.__name__)  # not the generated
        doc = inspect.getdoc(cls) if own_doc else ""
        lines += [f"## {title}", ""]
        if doc:
            lines += [doc.replace("\n", " "), ""]
        lines += ["| key | type | default | allowed | released | meaning |"]
        lines += ["| --- | --- | --- | --- | --- | --- |", *rows, ""]
    return "\n".join(lines)


def main() -> None:
    print(reference(), end="")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()

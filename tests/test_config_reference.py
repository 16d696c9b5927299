"""docs/configuration.md is generated from the config dataclasses and kept current."""

import dataclasses
import os
import typing

from urt_jax.config import RunConfig
from urt_jax.config_reference import field_comments, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configuration_reference_is_current():
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        written = f.read()
    assert written == reference(), "run: python -m urt_jax.config_reference > docs/configuration.md"


def test_every_key_has_a_meaning_and_a_row():
    text = reference()

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                assert comments.get(f.name), f"{prefix}{f.name} has no comment in its dataclass"
                yield prefix + f.name

    keys = list(walk(RunConfig, ""))
    assert len(keys) > 80
    for key in keys:
        assert f"| `{key}` |" in text, key
    assert "| `grpo.beta` | float | `0.04` | value >= 0 | `0.04` |" in text

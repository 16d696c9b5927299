"""Task prompt templates: data files (configs/templates/*.yaml, shipped in the package) that
render a record's user turn.

A template file maps task -> mode -> text with ``${prompt}``, ``${answer1}``, ``${answer2}`` and
``${answer}`` placeholders (string.Template syntax, so free text may contain braces). The user turn
is the record's media (in order) followed by the rendered text, as in UnifiedReward-Think.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping

import yaml

from urt_jax.data.records import MODES, TASKS, PreferenceRecord, RecordError
from urt_jax.resources import DEFAULT_TEMPLATES, resolve_input

_ALLOWED = {"prompt", "answer1", "answer2", "answer"}


class TemplateError(ValueError):
    pass


class Templates:
    def __init__(self, texts: Mapping[str, Mapping[str, str]], source: str = "templates"):
        self.source = source
        self._texts: dict[tuple[str, str], string.Template] = {}
        for task, modes in texts.items():
            if task not in TASKS:
                raise TemplateError(f"{source}: unknown task {task!r}; expected one of {TASKS}")
            if not isinstance(modes, Mapping):
                raise TemplateError(f"{source}: {task}: expected a mapping of mode -> text")
            for mode, text in modes.items():
                if mode not in MODES:
                    raise TemplateError(
                        f"{source}: {task}.{mode}: unknown mode; expected one of {MODES}"
                    )
                tpl = string.Template(str(text))
                names = {
                    m.group("named") or m.group("braced")
                    for m in tpl.pattern.finditer(tpl.template)
                } - {None}
                if names - _ALLOWED:
                    raise TemplateError(
                        f"{source}: {task}.{mode}: unknown placeholder(s) "
                        f"{sorted(names - _ALLOWED)}; allowed {sorted(_ALLOWED)}"
                    )
                self._texts[(task, mode)] = tpl

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_TEMPLATES) -> Templates:
        """A template file: the path as given, else the one shipped in the package."""
        path = resolve_input(os.fspath(path))
        if not os.path.isfile(path):
            raise TemplateError(f"{path}: template file not found")
        with open(path) as f:
            data = yaml.safe_load(f)
        if not isinstance(data, Mapping):
            raise TemplateError(f"{path}: expected a mapping of task -> mode -> text")
        return cls(data, source=path)

    def has(self, task: str, mode: str) -> bool:
        return (task, mode) in self._texts

    def render(self, record: PreferenceRecord) -> str:
        """The user text of a record (its fixed user_text when the source carried one)."""
        if record.user_text is not None:
            return record.user_text
        key = (record.task, record.mode)
        if key not in self._texts:
            raise RecordError(
                f"{record.source or record.id}: no template for {record.task} "
                f"({record.mode}) in {self.source}"
            )
        values = {"prompt": record.prompt}
        if record.mode == "pairwise" and len(record.answers) == 2:
            values.update(answer1=record.answers[0], answer2=record.answers[1])
        elif len(record.answers) == 1:
            values["answer"] = record.answers[0]
        try:
            return self._texts[key].substitute(values)
        except KeyError as e:
            raise RecordError(
                f"{record.source or record.id}: the {record.task} ({record.mode}) "
                f"template needs ${{{e.args[0]}}}, which this record lacks"
            ) from None

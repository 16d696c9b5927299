"""A template file with the release's exact prompt wording, read from the user's own clone of
UnifiedReward-Think (CodeGoat24/UnifiedReward): ``urt-jax data templates-from-release``.

The project ships its own wording; a released checkpoint answers best to the words it was trained
with, which live in the release's Qwen inference scripts as string literals and f-strings. The
scripts are parsed, never run: a prompt is a string expression holding ``<think>``, ``<answer>``
and the task's two verdicts, its literal text is kept byte for byte (``$`` written ``$$``) and each
f-string field becomes the placeholder its label names (``Caption``/``Question`` -> ``${prompt}``,
``Answer 1`` -> ``${answer1}``, ``Answer 2`` -> ``${answer2}``).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from urt_jax.atomic import write_text
from urt_jax.data.records import PAIRWISE_VERDICTS, TASKS
from urt_jax.data.templates import Templates
from urt_jax.resources import DEFAULT_TEMPLATES

FOLDER = "UnifiedReward-Think"
_INFERENCE = "inference_qwen/{task}/qwen_infer_cot_{task}.py"
_BENCHMARKS = {
    "image_generation": ["GenAI-Bench-Image"],
    "video_generation": ["GenAI-Bench-Video", "VideoGen-RewardBench"],
    "image_understanding": ["VL-RewardBench"],
    "video_understanding": [],
}
_FIELDS = {
    "image_generation": {"prompt"},
    "video_generation": {"prompt"},
    "image_understanding": {"prompt", "answer1", "answer2"},
    "video_understanding": {"prompt", "answer1", "answer2"},
}
_LABEL = re.compile(r"(Caption|Question|Answer 1|Answer 2)\s*:\s*\[?\s*\Z")
_PLACEHOLDER = {
    "caption": "prompt",
    "question": "prompt",
    "answer 1": "answer1",
    "answer 2": "answer2",
}

Part = str | ast.FormattedValue


@dataclass
class ReleaseTemplates:
    """``texts``: task -> mode -> template text; ``read``: the scripts read and ``sources``:
    task -> the script its prompt came from (paths from the clone's root); ``missing``: one line
    per pairwise prompt not found, saying where it looked and why each place failed."""

    texts: dict[str, dict[str, str]] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


class ReleaseTemplateError(ValueError):
    pass


def _release_folder(clone_dir: str) -> str:
    """The UnifiedReward-Think folder: CLONE_DIR itself or its child of that name."""
    inner = os.path.join(clone_dir, FOLDER)
    if os.path.isdir(inner):
        return inner
    if any(
        os.path.isdir(os.path.join(clone_dir, d))
        for d in ("inference_qwen", "benchmark_evaluation")
    ):
        return clone_dir
    raise ReleaseTemplateError(
        f"{clone_dir}: not a clone of the release (no {FOLDER}/ folder, nor its inference_qwen/ "
        "or benchmark_evaluation/)"
    )


def _scripts(folder: str, task: str) -> list[str]:
    """Where a task's prompt may be, relative to the folder: its Qwen inference script, then its
    Qwen CoT benchmark scripts (patterns where none is there)."""
    paths = [_INFERENCE.format(task=task)]
    for bench in _BENCHMARKS[task]:
        pattern = f"benchmark_evaluation/{bench}/test_qwen25_cot_*.py"
        found = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
        paths += [os.path.relpath(p, folder).replace(os.sep, "/") for p in found] or [pattern]
    return paths


def _parts(node: ast.AST) -> list[Part] | None:
    """The literal text and fields of a string expression (a literal, an f-string or a sum of
    them), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value if isinstance(v, ast.Constant) else v for v in node.values]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _parts(node.left), _parts(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _strings(tree: ast.AST) -> list[list[Part]]:
    """Every outermost string expression in the module, in source order."""
    found: list[tuple[int, int, list[Part]]] = []

    def visit(node: ast.AST) -> None:
        parts = _parts(node)
        if parts is not None:
            found.append((node.lineno, node.col_offset, parts))  # type: ignore[attr-defined]
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [parts for _, _, parts in sorted(found, key=lambda x: x[:2])]


def _to_template(parts: list[Part], task: str) -> str:
    out: list[str] = []
    literal = ""
    names = set()
    for part in parts:
        if isinstance(part, str):
            out.append(part.replace("$", "$$"))
            literal += part
            continue
        expr = ast.unparse(part.value)
        if part.conversion != -1 or part.format_spec is not None:
            raise ReleaseTemplateError(f"the field {{{expr}}} has a conversion or format spec")
        label = _LABEL.search(literal)
        if label is None:
            raise ReleaseTemplateError(
                f"the field {{{expr}}} follows no known label "
                "(Caption, Question, Answer 1, Answer 2)"
            )
        name = _PLACEHOLDER[label.group(1).lower()]
        names.add(name)
        out.append("${" + name + "}")
        literal = ""
    if names != _FIELDS[task]:
        raise ReleaseTemplateError(
            f"its fields map to {sorted(names)}, expected {sorted(_FIELDS[task])}"
        )
    return "".join(out)


def _prompt_in(source: str, task: str) -> str:
    """The task's prompt in a script's source, as template text."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ReleaseTemplateError(f"cannot parse it: {e.msg} (line {e.lineno})") from None
    markers = ("<think>", "<answer>", *PAIRWISE_VERDICTS[task])
    reasons = []
    for parts in _strings(tree):
        literal = "".join(p for p in parts if isinstance(p, str))
        if all(m in literal for m in markers):
            try:
                return _to_template(parts, task)
            except ReleaseTemplateError as e:
                reasons.append(str(e))
    raise ReleaseTemplateError(
        "; ".join(reasons) or "no prompt with <think>, <answer> and the verdicts"
    )


def templates_from_release(clone_dir: str) -> ReleaseTemplates:
    """The release's pairwise prompts found in a clone (its root or its UnifiedReward-Think
    folder), with the project's pointwise prompts, which the release does not have."""
    folder = _release_folder(clone_dir)
    result = ReleaseTemplates()
    for task in TASKS:
        looked = []
        for rel in _scripts(folder, task):
            name = f"{FOLDER}/{rel}"
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                looked.append(f"{name} (no such file)")
                continue
            result.read.append(name)
            try:
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                result.texts[task] = {"pairwise": _prompt_in(source, task)}
            except (OSError, UnicodeDecodeError, ReleaseTemplateError) as e:
                looked.append(f"{name} ({e})")
                continue
            result.sources[task] = name
            break
        else:
            result.missing.append(f"{task} (pairwise): looked in " + "; ".join(looked))
    with open(DEFAULT_TEMPLATES, encoding="utf-8") as f:
        defaults = yaml.safe_load(f)
    for task in TASKS:
        if "pointwise" in defaults.get(task, {}):
            result.texts.setdefault(task, {})["pointwise"] = defaults[task]["pointwise"]
    result.texts = {task: result.texts[task] for task in TASKS if task in result.texts}
    Templates(result.texts, source="the release's prompts")  # refuse what the loader would
    return result


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _comment(line: str) -> str:
    return "# " + line.replace("\r", " ").replace("\n", " ") if line else "#"


def write_release_templates(result: ReleaseTemplates, out_path: str) -> None:
    """A template file (``data.templates``) holding ``result``, its header naming every script
    read and every prompt not found; written whole or not at all."""
    header = [
        "Written by `urt-jax data templates-from-release` from a clone of the release",
        "(CodeGoat24/UnifiedReward). The pairwise prompts are the release's text, byte for byte,",
        "with $ written $$ and its f-string fields as ${prompt}, ${answer1}, ${answer2}.",
        "",
        "Scripts read:",
        *[f"  {p}" for p in result.read],
        "Pairwise prompts taken from:",
        *[f"  {t}: {p}" for t, p in result.sources.items()],
    ]
    if result.missing:
        header += ["Not found (no pairwise template for these tasks):"]
        header += [f"  {m}" for m in result.missing]
    header += [
        "",
        "The pointwise prompts are this project's extension, not the release's (it has none):",
        "copied from the project's default template file",
        "(configs/templates/unifiedreward_think.yaml).",
    ]
    body = yaml.dump(
        result.texts, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=float("inf")
    )
    write_text(out_path, "\n".join(_comment(h) for h in header) + "\n" + body)


def main(clone_dir: str, out: str) -> int:
    """Reads the prompts, writes what was found to ``out``; 0 when all four pairwise prompts were
    found, else 1."""
    try:
        result = templates_from_release(clone_dir)
    except ReleaseTemplateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in result.read:
        print(f"read {name}")
    for task, name in result.sources.items():
        print(f"found {task} (pairwise) in {name}")
    for line in result.missing:
        print(f"missing {line}")
    write_release_templates(result, out)
    found = len(result.sources)
    print(
        f"wrote {out}: {found} of {len(TASKS)} pairwise prompts from the release, the pointwise "
        "prompts from the project's defaults"
    )
    if found == len(TASKS):
        print(f"use it with data.templates={out}")
    return 0 if found == len(TASKS) else 1

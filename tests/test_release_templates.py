"""Reading the prompts out of a clone of the release: fixture scripts in the release's layout,
worded for these tests."""

import os

import pytest
import yaml

from tests.release_clone import (
    BENCH,
    IMAGE_GEN,
    IMAGE_GEN_TEXT,
    IMAGE_UND,
    IMAGE_UND_TEXT,
    INF,
    VIDEO_GEN_BENCH,
    VIDEO_GEN_TEXT,
    VIDEO_UND_TEXT,
    _write,
    write_release_clone,
)
from urt_jax.data.records import TASKS, Media, PreferenceRecord
from urt_jax.data.release_templates import main, templates_from_release, write_release_templates
from urt_jax.data.templates import Templates
from urt_jax.resources import DEFAULT_TEMPLATES


@pytest.fixture
def clone(tmp_path):
    return write_release_clone(tmp_path / "UnifiedReward")


def _render(templates, task, prompt, answers=()):
    kind = "video" if task.startswith("video") else "image"
    media = tuple(Media(kind, path="x") for _ in range(1 if answers else 2))
    verdict = "Answer 1 is better" if answers else f"{kind.capitalize()} 1 is better"
    record = PreferenceRecord("r", task, "pairwise", verdict, media, prompt, tuple(answers))
    return templates.render(record)


def test_every_prompt_lands_exactly(clone):
    result = templates_from_release(clone)
    assert result.missing == []
    assert {t: m["pairwise"] for t, m in result.texts.items()} == {
        "image_generation": IMAGE_GEN_TEXT,
        "video_generation": VIDEO_GEN_TEXT,
        "image_understanding": IMAGE_UND_TEXT,
        "video_understanding": VIDEO_UND_TEXT,
    }
    assert sorted(result.read) == sorted(
        [INF.format(t) for t in TASKS if t != "video_generation"] + [BENCH]
    )
    assert result.sources["video_generation"] == BENCH
    # the UnifiedReward-Think folder itself works as well
    inner = templates_from_release(os.path.join(clone, "UnifiedReward-Think"))
    assert inner.texts == result.texts and inner.read == result.read


def test_placeholders_render_where_the_release_put_its_fields(clone):
    templates = Templates(templates_from_release(clone).texts)
    got = _render(templates, "image_generation", "a red fox")
    assert got.endswith(
        "costs $5 and keeps {braces}. Think in <think></think>, then <answer>: "
        "'Image 1 is better' or 'Image 2 is better'.\n\nText Caption: [a red fox]"
    )
    assert _render(templates, "video_generation", "a $ sign").endswith("Text Caption: [a $ sign]")
    got = _render(templates, "image_understanding", "What is it?", ("A cat.", "A dog."))
    assert got.endswith("\n\nQuestion: [What is it?]\nAnswer 1: [A cat.]\nAnswer 2: [A dog.]")
    got = _render(templates, "video_understanding", "Who runs?", ("A man.", "Nobody."))
    assert got.endswith("</answer>.\n\nQuestion: Who runs?\nAnswer 1: A man.\nAnswer 2: Nobody.\n")


def test_the_file_written_loads_and_round_trips(clone, tmp_path, capsys):
    out = str(tmp_path / "out" / "release.yaml")
    assert main(clone, out) == 0
    printed = capsys.readouterr().out
    assert BENCH in printed and "data.templates=" in printed
    with open(out) as f:
        text = f.read()
    assert yaml.safe_load(text) == templates_from_release(clone).texts
    header = [line for line in text.splitlines() if line.startswith("#")]
    for name in [INF.format("image_generation"), BENCH]:
        assert any(name in line for line in header)
    assert any("pointwise" in line and "extension" in line for line in header)
    templates = Templates.load(out)
    assert all(templates.has(t, m) for t in TASKS for m in ("pairwise", "pointwise"))
    assert not [n for n in os.listdir(tmp_path / "out") if n != "release.yaml"]


def test_pointwise_comes_from_the_shipped_defaults(clone):
    with open(DEFAULT_TEMPLATES) as f:
        defaults = yaml.safe_load(f)
    texts = templates_from_release(clone).texts
    for task in TASKS:
        assert texts[task]["pointwise"] == defaults[task]["pointwise"]


def test_a_prompt_not_found_is_reported_and_the_rest_written(tmp_path, capsys):
    clone = _write(
        tmp_path / "clone",
        {
            INF.format("image_generation"): IMAGE_GEN,
            INF.format("video_generation"): VIDEO_GEN_BENCH.replace(
                "Text Caption: [{prompt}]", "[{prompt}]"
            ),
            INF.format("image_understanding"): IMAGE_UND.replace("{R1}", "{R1!r}"),
            INF.format("video_understanding"): 'TEXT = "Answer in <think> and <answer> tags."\n',
        },
    )
    result = templates_from_release(clone)
    assert list(result.sources) == ["image_generation"]
    missing = {line.split(" ")[0]: line for line in result.missing}
    assert set(missing) == {"video_generation", "image_understanding", "video_understanding"}
    assert "follows no known label" in missing["video_generation"]
    bench_pattern = "benchmark_evaluation/VideoGen-RewardBench/test_qwen25_cot_*.py (no such file)"
    assert bench_pattern in missing["video_generation"]
    assert "conversion or format spec" in missing["image_understanding"]
    assert "no prompt with <think>" in missing["video_understanding"]
    assert all("(pairwise): looked in UnifiedReward-Think/" in line for line in result.missing)

    out = str(tmp_path / "partial.yaml")
    assert main(clone, out) == 1
    assert "missing video_understanding (pairwise)" in capsys.readouterr().out
    with open(out) as f:
        header = [line for line in f if line.startswith("#")]
    assert sum("(pairwise): looked in" in line for line in header) == 3
    templates = Templates.load(out)
    assert templates.has("image_generation", "pairwise")
    assert not templates.has("video_understanding", "pairwise")
    with open(out) as f:
        assert list(yaml.safe_load(f)) == list(TASKS)
    assert templates.has("video_understanding", "pointwise")


def test_a_folder_that_is_no_clone(tmp_path, capsys):
    assert main(str(tmp_path), str(tmp_path / "out.yaml")) == 1
    assert "not a clone" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out.yaml")


def test_literal_text_is_kept_byte_exact(tmp_path):
    """Odd whitespace, trailing spaces and non-ASCII survive the YAML round trip."""
    odd = (
        'prompt = ""\n'
        "t = f\"  lead <think> \\t tab  \\n trailing   \\n\\u00e9 'Image 1 is better' "
        "'Image 2 is better' <answer>\\n\\n\\nText Caption: [{prompt}]\\n\\n\"\n"
    )
    clone = _write(tmp_path / "c", {INF.format("image_generation"): odd})
    result = templates_from_release(clone)
    out = str(tmp_path / "odd.yaml")
    write_release_templates(result, out)
    with open(out) as f:
        assert yaml.safe_load(f)["image_generation"]["pairwise"] == (
            "  lead <think> \t tab  \n trailing   \n\u00e9 'Image 1 is better' 'Image 2 is better' "
            "<answer>\n\n\nText Caption: [${prompt}]\n\n"
        )

"""eval.protocol=release: the order draws, the hit rule and each benchmark's figures, checked
against counts made by hand from fixed judge outputs."""

import random

import pytest
from PIL import Image

from urt_jax.data.media import open_image
from urt_jax.data.records import PAIRWISE_VERDICTS, BenchmarkTag, Media, PreferenceRecord
from urt_jax.evaluate import judgements, markdown_table, summarize
from urt_jax.release_protocol import NOT_JUDGED_TIE, release_items


def _vl(rid, subset, verdict):
    return PreferenceRecord(
        rid,
        "image_understanding",
        "pairwise",
        verdict,
        (Media("image", path="unused.png"),),
        prompt=f"question {rid}",
        answers=(f"first answer of {rid}", f"second answer of {rid}"),
        benchmark=BenchmarkTag("vl-rewardbench", rid, subset, [0, 1]),
    )


def _generation(name, task, rid, verdict, label, media):
    return PreferenceRecord(
        rid,
        task,
        "pairwise",
        verdict,
        media,
        prompt=f"caption {rid}",
        benchmark=BenchmarkTag(name, rid, None, label),
    )


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, size in enumerate([(40, 30), (64, 48)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", size, (10 * i, 20, 30)).save(p)
        paths.append(str(p))
    return paths


def _records(images):
    vl = [
        # (id, group, expected verdict in the published order, what the judge will say)
        ("g1", "general", "Answer 1 is better", "right"),
        ("g2", "general", "Answer 2 is better", "wrong"),
        ("g3", "general", "Answer 1 is better", "wrong"),
        ("h1", "hallucination", "Answer 2 is better", "right"),
        # right only in its reasoning: the release counts the verdict string anywhere
        ("h2", "hallucination", "Answer 1 is better", "right_in_think_only"),
        ("r1", "reasoning", "Answer 1 is better", "wrong"),
        ("r2", "reasoning", "Answer 2 is better", "too_long"),
    ]
    pair = tuple(Media("image", path=p) for p in images)
    genai = [
        ("i1", "Image 1 is better", "leftvote", "right"),
        ("i2", "tie", "tievote", None),
        ("i3", "Image 2 is better", "rightvote", "wrong"),
        ("i4", "tie", "bothbad_vote", None),
        ("i5", "Image 2 is better", "rightvote", "right"),
    ]
    videos = tuple(Media("video", path=f"{v}.mp4") for v in ("a", "b"))
    videogen = [
        ("v1", "Video 1 is better", "A", "Video 1 is better"),
        # both strings: the release reads "Video 1" first, so a B item is missed
        ("v2", "Video 2 is better", "B", "Video 1 is better or Video 2 is better"),
        ("v3", "tie", "same", "they are equally good"),  # a judged tie, named neither: right
        ("v4", "tie", "same", "Video 2 is better"),
        ("v5", "Video 1 is better", "A", "Video 2 is better"),
    ]
    records = [_vl(rid, group, verdict) for rid, group, verdict, _ in vl]
    records += [
        _generation("genai-bench-image", "image_generation", rid, v, label, pair)
        for rid, v, label, _ in genai
    ]
    records += [
        _generation("videogen-rewardbench", "video_generation", rid, v, label, videos)
        for rid, v, label, _ in videogen
    ]
    intents = {rid: say for rid, *_, say in vl + genai + videogen}
    return records, intents


def _output(item, intent):
    expected = item.record.verdict
    if item.record.benchmark.name == "videogen-rewardbench":
        return f"<think>...</think><answer>{intent}</answer>"
    first, second = PAIRWISE_VERDICTS[item.record.task]
    other = second if expected == first else first
    if intent == "right":
        return f"<think>...</think>\n<answer>{expected}</answer>"
    if intent == "wrong":
        return f"<think>...</think>\n<answer>{other}</answer>"
    assert intent == "right_in_think_only"
    return f"<think>maybe {expected}</think>\n<answer>{other}</answer>"


def test_release_accounting_matches_a_hand_count(images):
    records, intents = _records(images)
    items = release_items(records, seed=0)
    assert len(items) == len(records)

    # VL-RewardBench: one draw per item in dataset order, as `random.seed(0)` in the release;
    # a swapped item shows the answers the other way round and expects the other verdict
    draws = random.Random(0)
    for item, record in zip(items[:7], records[:7], strict=True):
        swap = draws.random() >= 0.5
        assert item.order == ("swapped" if swap else "original")
        assert item.record.answers == (record.answers[::-1] if swap else record.answers)
        assert (item.record.verdict == record.verdict) != swap
    # GenAI-Bench: ties are counted, never judged; the others' images are 512 x 512
    genai = items[7:12]
    assert [i.not_judged for i in genai] == [None, NOT_JUDGED_TIE, None, NOT_JUDGED_TIE, None]
    for item in genai:
        if item.not_judged is None:
            assert [open_image(m.data).size for m in item.record.media] == [(512, 512)] * 2
    # VideoGen-RewardBench: the published order, ties judged
    assert [i.order for i in items[12:]] == ["original"] * 5
    assert all(i.not_judged is None for i in items[12:])

    outputs, too_long = [], {}
    for index, item in enumerate(items):
        intent = intents[item.record.id]
        if intent == "too_long":
            too_long[index] = "prompt of 9000 tokens exceeds max_length 8192"
        outputs.append(None if intent in (None, "too_long") else _output(item, intent))
    rows = judgements(items, outputs, too_long, release=True)
    summary = summarize(rows, "release")
    bench = summary["benchmarks"]

    # VL-RewardBench: r2 skipped; hits g1, h1, h2 of 6 items
    vl = bench["vl-rewardbench"]
    assert (vl["items"], vl["hits"], vl["skipped"]) == (6, 3, 1)
    assert vl["overall_accuracy"] == pytest.approx(3 / 6)
    assert vl["groups"] == pytest.approx(
        {"general": 1 / 3, "hallucination": 2 / 2, "reasoning": 0 / 1}
    )
    assert vl["macro_accuracy"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    # GenAI-Bench image: hits i1, i5 of 5 items, 2 of them ties
    gi = bench["genai-bench-image"]
    assert (gi["items"], gi["hits"], gi["ties"]) == (5, 2, 2)
    assert gi["accuracy"] == pytest.approx(2 / 5)
    assert gi["accuracy_without_ties"] == pytest.approx(2 / 3)
    # VideoGen-RewardBench: hits v1 and the tie v3 of 5 items, 2 of them ties
    vg = bench["videogen-rewardbench"]
    assert (vg["items"], vg["hits"], vg["ties"]) == (5, 2, 2)
    assert vg["accuracy"] == pytest.approx(2 / 5)
    assert vg["accuracy_without_ties"] == pytest.approx((2 - 1) / (5 - 2))

    table = markdown_table(summary)
    assert "| this run | 50.0 | 44.4 | 40.0 | 66.7 | 40.0 | 33.3 |" in table
    assert "| vl-rewardbench | 6 | 3 | 0 | 1 | general 0.333, hallucination 1.000" in table


def test_release_protocol_needs_imported_items():
    record = PreferenceRecord(
        "x",
        "image_generation",
        "pairwise",
        "Image 1 is better",
        (Media("image", path="a.png"), Media("image", path="b.png")),
        prompt="a caption",
        source="held.jsonl:3",
    )
    with pytest.raises(ValueError, match="held.jsonl:3: .*urt-jax data import"):
        release_items([record])

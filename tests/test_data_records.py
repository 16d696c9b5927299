"""Candidate swapping, refusing bad data, synthetic determinism, video files."""

import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.media_files import encode_video
from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.media import decode_video
from urt_jax.data.pipeline import InvalidDataError
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.records import Media, PreferenceRecord, RecordError
from urt_jax.data.sources import open_records
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import load_tokenizer
from urt_jax.model.config import Qwen25VLConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(tmp_path):
    paths = []
    for i, color in enumerate(((250, 0, 0), (0, 0, 250))):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (56, 56), color).save(p)
        paths.append(str(p))
    return paths


def test_swapping_flips_the_verdict_and_the_pixels(tmp_path):
    a, b = _images(tmp_path)
    record = PreferenceRecord(
        "r",
        "image_generation",
        "pairwise",
        "Image 1 is better",
        media=(Media("image", path=a), Media("image", path=b)),
        prompt="a red square",
    )
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    kw = dict(
        tokenizer=load_tokenizer(),
        templates=Templates.load(),
        model_config=config,
        processor=ProcessorConfig(max_pixels=56 * 56),
        include_reply=False,
    )
    plain = ExampleBuilder(**kw)(record)
    swapped = ExampleBuilder(**kw, swap_probability=1.0)(record)
    assert str(plain["verdict"]) == "Image 1 is better"
    assert str(swapped["verdict"]) == "Image 2 is better"
    half = plain["pixel_values"].shape[0] // 2
    np.testing.assert_array_equal(swapped["pixel_values"][:half], plain["pixel_values"][half:])
    # a record with a fixed reasoning text is never swapped (its reasoning names positions)
    with pytest.raises(RecordError, match="cannot swap"):
        PreferenceRecord(
            "r",
            "image_generation",
            "pairwise",
            "Image 1 is better",
            media=record.media,
            prompt="x",
            reply="<answer>x</answer>",
        ).swapped()


def test_bad_data_is_refused_unless_skipped(tmp_path, caplog):
    a, b = _images(tmp_path)
    good = {
        "id": "g",
        "task": "image_generation",
        "prompt": "p",
        "images": [a, b],
        "verdict": "Image 1 is better",
    }
    lines = [good, {**good, "verdict": "both"}, {**good, "task": "audio"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(InvalidDataError, match=r"(?s)2 invalid record\(s\) of 3.*d\.jsonl:2"):
        open_records(str(path), str(tmp_path))
    records = open_records(str(path), str(tmp_path), skip_invalid=True)
    assert [r.id for r in records] == ["g"]
    assert "2 invalid record(s)" in caplog.text


def test_synthetic_is_deterministic_and_splits_differ(tmp_path):
    cfg = SyntheticConfig(image_size=28, num_frames=2)
    one = write_synthetic(str(tmp_path / "a"), 8, 4, seed=1, cfg=cfg)
    two = write_synthetic(str(tmp_path / "b"), 8, 4, seed=1, cfg=cfg)
    assert filecmp.cmp(one["train"], two["train"], shallow=False)
    rows = [json.loads(x) for x in open(one["train"])]
    for row in rows:
        for rel in row.get("images", []):
            assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False)
    held = [json.loads(x)["prompt"] for x in open(one["heldout"])]
    assert {r["task"] for r in rows} == {
        "image_generation",
        "video_generation",
        "image_understanding",
        "video_understanding",
    }
    assert [r["prompt"] for r in rows[:4]] != held


@pytest.mark.parametrize("trace", ["full", "brief"])
def test_synthetic_teacher_traces_earn_full_reward(tmp_path, trace):
    from urt_jax.rewards import accuracy_reward, format_reward

    cfg = SyntheticConfig(image_size=28, num_frames=2, pointwise_fraction=0.5, trace=trace)
    rows = [json.loads(x) for x in open(write_synthetic(str(tmp_path), 16, 1, 2, cfg)["train"])]
    assert {r["mode"] for r in rows} == {"pairwise", "pointwise"}
    for row in rows:
        assert format_reward(row["reply"]) == 1.0 and accuracy_reward(row["reply"], row["verdict"])
        think = row["reply"].split("</think>")[0]
        if trace == "full":
            assert " shows " in think, think  # what is seen is stated before the verdict
        elif row["mode"] == "pairwise":
            # each judgement sits right after the value it judges; the loser is named last
            lines = think.split("\n")[1:-1]
            assert all(" agrees" in x or " contradicts" in x for x in lines), think
            loser = lines[-1].split(" contradicts")[0].split()[-1]
            assert row["verdict"].split()[1] != loser, (row["verdict"], think)
        assert ("Total score:" in row["reply"]) == (trace == "full" and row["mode"] == "pairwise")
    with pytest.raises(ValueError, match="trace"):
        SyntheticConfig(trace="long")


def test_video_file_decodes_and_samples(tmp_path):
    frames = [np.full((56, 56, 3), 20 * i, np.uint8) for i in range(12)]
    path = str(tmp_path / "v.mp4")
    encode_video(frames, path, fps=4)
    got, fps = decode_video(path, max_frames=6)
    assert len(got) == 6 and got[0].size == (56, 56)
    assert fps == pytest.approx(2.0)  # 6 of 12 frames at 4 fps
    means = [np.asarray(f).mean() for f in got]
    assert means == sorted(means)  # evenly spaced frames in order

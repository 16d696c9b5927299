"""Readers for the three formats, and `urt-jax data check` naming every bad record's line."""

import json

import numpy as np
import pytest
from PIL import Image

from urt_jax.cli import main as cli_main
from urt_jax.data.readers import read_records
from urt_jax.data.records import PreferenceRecord, RecordError
from urt_jax.data.tokenizer import ASSET_DIR

REPLY = "<think>\nImage 1 looks right.\n</think>\n<answer>Image 1 is better</answer>"


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    Image.new("RGB", (3000, 3000)).save(tmp_path / "huge.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(
            tmp_path / f"f{i}.png"
        )
    return tmp_path


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_three_formats_parse(root):
    path = _write(
        root / "mixed.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "<image>\n<image>\nCompare. Caption: x"},
                    {"from": "gpt", "value": REPLY},
                ],
                "images": ["a.png", "b.png"],
            },
            {
                "problem": "Compare the answers.",
                "solution": "Answer 2 is better",
                "video": ["f0.png", "f1.png", "f2.png"],
            },
            {
                "id": "n1",
                "task": "image_understanding",
                "prompt": "What colour?",
                "images": ["a.png"],
                "answers": ["Red.", "Blue."],
                "verdict": "Answer 1 is better",
            },
        ],
    )
    sft, grpo, native = list(read_records(path))
    assert isinstance(sft, PreferenceRecord) and sft.task == "image_generation"
    # the tags stay in the text and mark where each image goes
    assert sft.user_text == "<image>\n<image>\nCompare. Caption: x" and sft.reply == REPLY
    assert sft.verdict == "Image 1 is better" and len(sft.media) == 2
    assert grpo.task == "video_understanding" and grpo.media[0].frames is not None
    assert native.answers == ("Red.", "Blue.") and native.source.endswith("mixed.jsonl:3")
    swapped = native.swapped()
    assert swapped.answers == ("Blue.", "Red.") and swapped.verdict == "Answer 2 is better"


def test_check_reports_every_bad_record_with_its_line(root, capsys):
    good = {
        "id": "g",
        "task": "image_generation",
        "prompt": "a cat",
        "images": ["a.png", "b.png"],
        "verdict": "Image 2 is better",
    }
    lines = [
        good,  # 1 ok
        '{"id": "x", "task": ',  # 2 malformed JSON
        {k: v for k, v in good.items() if k != "verdict"},  # 3 missing field
        {**good, "images": ["a.png", "missing.png"]},  # 4 missing media
        {**good, "images": ["a.png", "broken.png"]},  # 5 undecodable media
        {**good, "images": ["../outside.png", "a.png"]},  # 6 escapes the root
        {**good, "verdict": "image 2 is better"},  # 7 verdict not allowed
        {**good, "images": ["a.png", "huge.png"]},  # 8 over the pixel limit
        {**good, "prompt": "a cat " * 400},  # 9 too long (tokenised)
    ]
    path = _write(root / "data.jsonl", lines)
    status = cli_main(
        [
            "data",
            "check",
            str(path),
            "--tokenizer",
            ASSET_DIR,
            "--max-length",
            "1200",
            "--max-image-pixels",
            "4000000",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    expected = {
        2: "malformed JSON",
        3: "missing field 'verdict'",
        4: "image file not found",
        5: "cannot decode image",
        6: "escapes the data root",
        7: "verdict 'image 2 is better' is not one of",
        8: "exceeds the limit of 4000000 pixels",
        9: "exceeds max_length 1200",
    }
    for line, message in expected.items():
        assert any(f"data.jsonl:{line}:" in row and message in row for row in out.splitlines()), (
            line,
            message,
            out,
        )
    assert "data.jsonl:1:" not in out
    assert "9 record(s) checked, 8 problem(s)" in out


def test_clean_file_passes(root, capsys):
    path = _write(
        root / "ok.jsonl",
        [
            {
                "id": "g",
                "task": "image_generation",
                "prompt": "a cat",
                "images": ["a.png", "b.png"],
                "verdict": "Image 2 is better",
            }
        ],
    )
    assert cli_main(["data", "check", str(path)]) == 0
    assert "1 record(s) checked, OK" in capsys.readouterr().out


def test_json_array_lines(root):
    path = root / "arr.json"
    path.write_text(
        '[\n  {"problem": "p", "solution": "Image 1 is better",\n'
        '   "images": ["a.png", "b.png"]},\n  {"problem": "q", "solution": "bad"}\n]\n'
    )
    first, second = list(read_records(path))
    assert isinstance(first, PreferenceRecord) and first.source.endswith("arr.json:2")
    assert isinstance(second, RecordError) and "arr.json:4" in str(second)

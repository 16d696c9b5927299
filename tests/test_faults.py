"""What real clusters do to runs, repeated on the tiny model: a failed checkpoint save (a full
disk), a corrupt latest checkpoint, a GRPO run killed between its completions and its
checkpoint, a metrics file torn mid-write, and paths a run cannot write to."""

import json
import logging
import os

import orbax.checkpoint as ocp
import pytest

from tests.conftest import DEMO_SMALL, working_directory
from urt_jax.cli import main as cli_main

SFT_SMALL = [
    "data.synthetic.n_train=8",
    "data.synthetic.n_heldout=4",
    "data.batch_size=4",
    "train.max_steps=4",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=5",
    "train.progress=false",
]


def _steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def _checkpoints(out):
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def test_a_failed_save_stops_at_once_and_a_corrupt_checkpoint_is_set_aside(
    tmp_path, monkeypatch, capsys, caplog
):
    """A save that fails (the disk is full) stops training with one message and the saved
    checkpoints intact; a rerun resumes. A checkpoint that cannot be restored is moved aside
    (never deleted) and the run goes on from the one before, saving the later steps again,
    and exports."""
    caplog.set_level(logging.INFO)
    out = str(tmp_path / "sft")
    command = ["sft", "configs/demo.yaml", f"output_dir={out}", *SFT_SMALL]
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with working_directory(tmp_path):
        assert cli_main(command) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "steps [1, 2]" in err
        assert "Traceback" not in err
        assert _checkpoints(out) == ["1", "2"]
        assert _steps(os.path.join(out, "metrics.jsonl")) == [1, 2, 3]
        monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
        # the newest checkpoint is damaged after the fact (a bad disk, a partial copy)
        for root, _, files in os.walk(os.path.join(out, "checkpoints", "2")):
            for name in files:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\0")
        assert cli_main(command) == 0
    assert "2.corrupt" in caplog.text and "resumed from step 1" in caplog.text
    assert _checkpoints(out) == ["1", "2", "2.corrupt", "3", "4"]
    assert _steps(os.path.join(out, "metrics.jsonl")) == [1, 2, 3, 4]
    assert os.path.exists(os.path.join(out, "hf", "model.safetensors"))


def test_resumed_grpo_holds_every_step_once(demo_workdir, tmp_path, caplog):
    """Killed after step 3's completions were written but before its checkpoint, and in the
    middle of a metrics line: the resumed run samples step 3 again, and completions.jsonl and
    metrics.jsonl hold every step once, step 3 as the uninterrupted run wrote it."""
    caplog.set_level(logging.INFO)
    demo = demo_workdir / "runs" / "demo"
    out = str(tmp_path / "grpo")
    command = [
        "grpo",
        "configs/demo.yaml",
        "--model",
        str(demo / "sft" / "hf"),
        f"grpo.data={demo / 'data' / 'heldout.jsonl'}",
        f"output_dir={out}",
        *DEMO_SMALL,
        "grpo.max_steps=3",
        "train.checkpoint_every=2",
    ]
    with working_directory(demo_workdir):
        assert cli_main(command) == 0
        completions = os.path.join(out, "completions.jsonl")
        metrics = os.path.join(out, "metrics.jsonl")
        with open(completions) as f:
            first = f.readlines()
        assert sorted(set(json.loads(r)["step"] for r in first)) == [1, 2, 3]
        os.rename(os.path.join(out, "checkpoints", "3"), str(tmp_path / "step3"))
        with open(metrics, "a") as f:
            f.write('{"step": 4, "loss": 0.1')  # torn by the kill
        assert cli_main(command) == 0
    assert "resumed GRPO from step 2" in caplog.text
    with open(completions) as f:
        again = f.readlines()
    assert again == first
    assert _steps(metrics) == [1, 2, 3]


def test_an_output_dir_that_cannot_be_written_is_a_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with working_directory(tmp_path):
        code = cli_main(["sft", "configs/demo.yaml", f"output_dir={blocker}/run", *SFT_SMALL])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["metrics.jsonl"])
def test_a_torn_line_inside_a_log_is_named(tmp_path, name):
    from urt_jax.atomic import cut_back_jsonl

    path = tmp_path / name
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{name}:2: not a JSON line"):
        cut_back_jsonl(str(path), 3)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert cut_back_jsonl(str(path), 5) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's claim)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_bad_media_are_found_before_training_with_their_line(tmp_path, caplog):
    """Corrupt, truncated, zero-byte, pixel-bomb and missing images and an undecodable video in
    a training file: the pre-flight names each record's file and line before any step; with
    data.skip_invalid the run drops those records and says so."""
    from urt_jax.data.pipeline import InvalidDataError, load_records
    from urt_jax.data.synthetic import SyntheticConfig, write_synthetic

    paths = write_synthetic(
        str(tmp_path), 16, 1, seed=4, cfg=SyntheticConfig(image_size=56, num_frames=4)
    )
    rows = [json.loads(line) for line in open(paths["train"])]
    images = [i for i, r in enumerate(rows) if r.get("images")]
    videos = [i for i, r in enumerate(rows) if r.get("videos")]
    assert len(images) >= 5 and videos, rows[0].keys()

    def image_of(i):
        return tmp_path / rows[i]["images"][0]

    image_of(images[0]).write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # corrupt
    whole = image_of(images[1]).read_bytes()
    image_of(images[1]).write_bytes(whole[: len(whole) // 2])  # truncated
    image_of(images[2]).write_bytes(b"")  # zero bytes
    _png_header_only(image_of(images[3]), 10_000, 10_000)  # pixel bomb
    image_of(images[4]).unlink()  # missing
    frames = rows[videos[0]]["videos"][0]  # a video given as frame images
    (tmp_path / frames[1]).write_bytes(b"GIF89a garbage")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")  # a video file
    rows.append(dict(rows[videos[0]], id="bad-video", videos=["bad.mp4", "bad.mp4"]))
    with open(paths["train"], "a") as f:
        f.write(json.dumps(rows[-1]) + "\n")
    bad = sorted([*images[:5], videos[0], len(rows) - 1])
    with pytest.raises(InvalidDataError) as e:
        load_records(paths["train"], max_errors_shown=10)
    message = str(e.value)
    assert f"{len(bad)} invalid record(s) of {len(rows)}" in message
    for i in bad:
        assert f"train.jsonl:{i + 1}:" in message, (i, message)
    for why in ("cannot decode image", "exceeds the limit", "image file not found", "decode video"):
        assert why in message
    kept = load_records(paths["train"], skip_invalid=True)
    assert [r.source for r in kept] == [
        f"{paths['train']}:{i + 1}" for i in range(len(rows)) if i not in bad
    ]
    assert "skipped (data.skip_invalid=true)" in caplog.text


def test_data_check_flags_an_empty_file_and_invalid_utf8(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli_main(["data", "check", str(empty)]) != 0
    assert "no records" in capsys.readouterr().out
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"id": "a"}\n{"prompt": "caf\xe9"}\n')
    assert cli_main(["data", "check", str(latin)]) != 0
    out = capsys.readouterr().out
    assert "latin1.jsonl:2: invalid UTF-8: byte 0xe9 at column 16" in out


def test_a_label_that_contradicts_its_own_reply_is_refused(tmp_path):
    from PIL import Image

    from urt_jax.data.readers import read_records

    for name in ("a.png", "b.png"):
        Image.new("RGB", (28, 28)).save(tmp_path / name)
    reply = "<think>x</think><answer>Image 2 is better</answer>"
    user = "<image>\n<image>\nCompare. Caption: x"
    rows = [
        {
            "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": reply}],
            "images": ["a.png", "b.png"],
            "verdict": "Image 1 is better",
        },
        {
            "id": "n",
            "task": "image_generation",
            "prompt": "x",
            "images": ["a.png", "b.png"],
            "verdict": "Image 1 is better",
            "reply": reply,
        },
        {
            "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": reply}],
            "images": ["a.png", "b.png"],
            "solution": "Image 2 is better",
        },
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(read_records(str(path)))
    assert [type(r).__name__ for r in got] == ["RecordError", "RecordError", "PreferenceRecord"]
    assert "sft.jsonl:1: verdict 'Image 1 is better' disagrees" in str(got[0])
    assert "sft.jsonl:2: the reply's <answer> 'Image 2 is better' disagrees" in str(got[1])


def test_eval_judges_the_valid_items_and_reports_the_invalid(demo_workdir, tmp_path, capsys):
    demo = demo_workdir / "runs" / "demo"
    heldout = demo / "data" / "heldout.jsonl"
    rows = [json.loads(line) for line in heldout.read_text().splitlines()][:3]
    image_row = next(r for r in rows if r.get("images"))
    rows.append(dict(image_row, images=["gone.png"] * len(image_row["images"])))
    rows.append({"id": "x", "task": "image_generation"})
    items = demo / "data" / "mixed_heldout.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    command = ["eval", "configs/demo.yaml", "--model", str(demo / "hf"), f"data.heldout={items}"]
    command += [f"output_dir={out}", *DEMO_SMALL, "eval.max_items=null", "eval.swap=false"]
    with working_directory(demo_workdir):
        assert cli_main(command) == 1
    err = capsys.readouterr().err
    assert "mixed_heldout.jsonl:4: " in err and "mixed_heldout.jsonl:5: " in err
    summary = json.loads((out / "eval" / "eval.json").read_text())
    assert summary["invalid"] == 2 and summary["items"] == 3
    lines = [json.loads(x) for x in (out / "eval" / "judgements.jsonl").read_text().splitlines()]
    errors = [row for row in lines if "error" in row]
    assert [e["line"].rsplit(":", 1)[1] for e in errors] == ["4", "5"]
    assert "not found" in errors[0]["error"]

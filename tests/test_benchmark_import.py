"""`urt-jax data import`: the four benchmarks read from small files in their published schemas
(HF parquet with Image structs, the release's data.json files, VideoGen-RewardBench's CSV), every
field checked in the records read back, bad rows reported with their file and row."""

import json
import os

import pyarrow as pa
import pytest
import yaml

from tests.benchmark_fixtures import (
    GENAI_IMAGE_SCHEMA,
    VL_SCHEMA,
    image_bytes,
    videogen_row,
    vl_row,
    write_parquet,
    write_video,
    write_videogen_csv,
)
from urt_jax.data.benchmark_import import ImportReport, import_benchmark, main
from urt_jax.data.benchmarks.convert import vl_rewardbench_group
from urt_jax.data.readers import read_records
from urt_jax.data.records import PreferenceRecord


def _read_back(report: ImportReport) -> list[PreferenceRecord]:
    """The records through the dataset YAML, all valid, plus checks of the files written."""
    records = list(read_records(report.yaml_path))
    assert all(isinstance(r, PreferenceRecord) for r in records), records
    assert all(r.id == f"{r.benchmark.name}/{r.benchmark.item_id}" for r in records)
    with open(report.yaml_path) as f:
        entry = yaml.safe_load(f)["datasets"][0]
    assert entry["json_path"] == report.out_path
    assert entry["image_folder"] == os.path.dirname(report.out_path)
    with open(report.out_path) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:  # media named relative to OUT_DIR, under media/
        for p in row.get("images", []) + row.get("videos", []):
            assert p.startswith("media/") and not os.path.isabs(p)
    assert len(rows) == len(records) == report.records
    return records


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tag(r: PreferenceRecord) -> tuple:
    return (r.benchmark.name, r.benchmark.item_id, r.benchmark.subset, r.benchmark.label)


# ------------------------------------------------------------------------------ VL-RewardBench
def test_vl_rewardbench_parquet_shards(tmp_path):
    png, jpg = image_bytes((200, 0, 0)), image_bytes((0, 200, 0), "JPEG")
    png2 = image_bytes((0, 0, 200))
    src = tmp_path / "VL-RewardBench"
    shard0 = src / "data" / "test-00000-of-00002.parquet"
    shard1 = src / "data" / "test-00001-of-00002.parquet"
    write_parquet(
        shard0,
        [
            vl_row("RLAIF-V-Dataset_12", {"bytes": png, "path": "a.png"}, [0, 1]),
            vl_row("mathverse_3", {"bytes": jpg, "path": None}, [1, 0], "Solve it.", ("1", "2")),
        ],
        VL_SCHEMA,
    )
    write_parquet(
        shard1,
        [
            vl_row("hallucination_pair-7", {"bytes": png2, "path": None}, [0, 1]),
            vl_row("wildvision-battle_9", {"bytes": b"not an image", "path": None}, [0, 1]),
        ],
        VL_SCHEMA,
    )
    # another split in the same folder is not read
    write_parquet(
        src / "data" / "train-00000-of-00001.parquet", [vl_row("x", None, [0, 1])], VL_SCHEMA
    )

    out = tmp_path / "out"
    report = import_benchmark("vl-rewardbench", str(src), str(out))
    assert report.sources == [str(shard0), str(shard1)]
    assert report.out_path == str(out / "vl-rewardbench.jsonl")
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{shard1}:row 1: ")
    assert "cannot decode image" in report.problems[0]
    assert report.records == 3 and report.ties == 0
    assert report.subsets == {"hallucination": 1, "reasoning": 1, "general": 1}

    records = _read_back(report)
    assert [r.benchmark.item_id for r in records] == [
        "RLAIF-V-Dataset_12",
        "mathverse_3",
        "hallucination_pair-7",
    ]
    assert {r.task for r in records} == {"image_understanding"}
    assert {r.mode for r in records} == {"pairwise"}
    assert [r.prompt for r in records] == ["What is shown?", "Solve it.", "What is shown?"]
    assert [r.answers for r in records] == [("A cat.", "A dog."), ("1", "2"), ("A cat.", "A dog.")]
    assert [r.verdict for r in records] == [
        "Answer 1 is better",
        "Answer 2 is better",
        "Answer 1 is better",
    ]
    assert [_tag(r) for r in records] == [
        ("vl-rewardbench", "RLAIF-V-Dataset_12", "hallucination", [0, 1]),
        ("vl-rewardbench", "mathverse_3", "reasoning", [1, 0]),
        ("vl-rewardbench", "hallucination_pair-7", "general", [0, 1]),
    ]
    assert [len(r.media) for r in records] == [1, 1, 1]
    assert [_bytes(r.media[0].path) for r in records] == [png, jpg, png2]
    assert [os.path.splitext(r.media[0].path)[1] for r in records] == [".png", ".jpg", ".png"]


def test_vl_rewardbench_release_json(tmp_path):
    folder = tmp_path / "VL-RewardBench"
    (folder / "images").mkdir(parents=True)
    png = image_bytes((10, 20, 30))
    (folder / "images" / "RLHF-V_1.png").write_bytes(png)
    rows = [
        vl_row("RLHF-V_1", "images/RLHF-V_1.png", [1, 0]),
        vl_row("mmmu_2", "images/mmmu_2.png", [0, 1]),  # no such image
        vl_row("svit", "images/RLHF-V_1.png", [0, 0]),  # a ranking it does not know
    ]
    (folder / "data.json").write_text(json.dumps(rows, indent=4))
    report = import_benchmark("vl-rewardbench", str(folder), str(tmp_path / "out"))
    src = str(folder / "data.json")
    assert report.sources == [src]
    assert report.problems == [
        f"{src}:row 1: image file 'images/mmmu_2.png' not found in {folder}",
        f"{src}:row 2: human_ranking [0, 0] is not [0, 1] or [1, 0]",
    ]
    (record,) = _read_back(report)
    assert (record.benchmark.item_id, record.verdict, record.answers) == (
        "RLHF-V_1",
        "Answer 2 is better",
        ("A cat.", "A dog."),
    )
    assert _tag(record) == ("vl-rewardbench", "RLHF-V_1", "hallucination", [1, 0])
    assert record.media[0].path == str(
        tmp_path / "out" / "media" / "vl-rewardbench" / "images" / "RLHF-V_1.png"
    )
    assert _bytes(record.media[0].path) == png


def _release_group(id_value: str) -> str:
    """The group as the release's VL-RewardBench script computes it, written as it is there."""
    split_index = min(
        (id_value.find("_"), id_value.find("-")), key=lambda x: x if x != -1 else float("inf")
    )
    id_prefix = id_value[:split_index] if split_index != -1 else id_value
    dtype = {
        "RLAIF": "rlaif-v",
        "RLHF": "rlhf-v",
        "mathverse": "reasoning_tasks",
        "mmmu": "reasoning_tasks",
        "wildvision": "wildvision-battle",
    }.get(id_prefix, "vlfeedback")
    return {
        "vlfeedback": "general",
        "povid": "hallucination",
        "reasoning_tasks": "reasoning",
        "rlhf-v": "hallucination",
        "rlaif-v": "hallucination",
        "wildvision-battle": "general",
    }[dtype]


@pytest.mark.parametrize(
    "item_id",
    [
        "RLAIF-V-Dataset_0",
        "RLAIF_1",
        "RLHF-V_3",
        "rlhf-v_3",
        "mathverse_mini-4",
        "mmmu-pro_5",
        "wildvision-battle_6",
        "wildvision_6",
        "hallucination_pair-1003",
        "jailbreak_1",
        "svit",
        "mmmu",
        "_mmmu",
        "mmmu_",
        "a-b_c",
    ],
)
def test_vl_rewardbench_groups_as_the_release_script(item_id):
    assert vl_rewardbench_group(item_id) == _release_group(item_id)


# ------------------------------------------------------------------------------ GenAI-Bench image
def test_genai_bench_image(tmp_path):
    images = [image_bytes((20 * i, 0, 0)) for i in range(10)]
    votes = ["leftvote", "rightvote", "tievote", "bothbad_vote", "upvote"]
    rows = [
        {
            "prompt": f"caption {i}",
            "left_model": "m1",
            "left_image": {"bytes": images[2 * i], "path": None},
            "right_model": "m2",
            "right_image": {"bytes": images[2 * i + 1], "path": None},
            "vote_type": vote,
        }
        for i, vote in enumerate(votes)
    ]
    src = tmp_path / "GenAI-Bench"
    test_file = src / "image_generation" / "test-00000-of-00001.parquet"
    write_parquet(test_file, rows, GENAI_IMAGE_SCHEMA)
    write_parquet(
        src / "image_generation" / "test_v1-00000-of-00001.parquet", rows, GENAI_IMAGE_SCHEMA
    )
    report = import_benchmark("genai-bench-image", str(src), str(tmp_path / "out"))
    assert report.sources == [str(test_file)]
    assert report.problems == [
        f"{test_file}:row 4: vote_type 'upvote' is not one of leftvote, rightvote, tievote, "
        "bothbad_vote"
    ]
    assert (report.records, report.ties, report.subsets) == (4, 2, {})
    records = _read_back(report)
    assert [r.benchmark.item_id for r in records] == ["0", "1", "2", "3"]
    assert {(r.task, r.mode, r.answers) for r in records} == {("image_generation", "pairwise", ())}
    assert [r.prompt for r in records] == [f"caption {i}" for i in range(4)]
    assert [r.verdict for r in records] == ["Image 1 is better", "Image 2 is better", "tie", "tie"]
    assert [_tag(r) for r in records] == [
        ("genai-bench-image", str(i), None, vote) for i, vote in enumerate(votes[:4])
    ]
    for i, r in enumerate(records):  # left then right, the published bytes
        assert [_bytes(m.path) for m in r.media] == images[2 * i : 2 * i + 2]


# ------------------------------------------------------------------------------ GenAI-Bench video
def test_genai_bench_video_release_json(tmp_path):
    folder = tmp_path / "GenAI-Bench-Video"
    a = write_video(folder / "videos" / "aa.mp4", 0)
    b = write_video(folder / "videos" / "bb.mp4", 100)
    rows = [
        {"id": 0, "prompt": "a ball", "video_left": "aa.mp4", "video_right": "bb.mp4",
         "vote_type": "rightvote"},
        {"id": 1, "prompt": "a tie", "video_left": "bb.mp4", "video_right": "aa.mp4",
         "vote_type": "tievote"},
        {"id": 2, "prompt": "lost", "video_left": "aa.mp4", "video_right": "gone.mp4",
         "vote_type": "leftvote"},
        {"id": 3, "prompt": "kite", "video_left": "aa.mp4", "video_right": "bb.mp4",
         "vote_type": "leftvote"},
    ]  # fmt: skip
    src = folder / "data.json"
    src.write_text(json.dumps(rows, indent=4))
    out = tmp_path / "out"
    assert main("genai-bench-video", str(src), str(out)) == 1
    report = import_benchmark("genai-bench-video", str(src), str(out))
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{src}:row 2: video file 'gone.mp4' not found in ")
    records = _read_back(report)
    assert [r.benchmark.item_id for r in records] == ["0", "1", "3"]
    assert [r.verdict for r in records] == ["Video 2 is better", "tie", "Video 1 is better"]
    assert [r.prompt for r in records] == ["a ball", "a tie", "kite"]
    assert {r.task for r in records} == {"video_generation"}
    assert [_tag(r) for r in records] == [
        ("genai-bench-video", "0", None, "rightvote"),
        ("genai-bench-video", "1", None, "tievote"),
        ("genai-bench-video", "3", None, "leftvote"),
    ]
    assert [[_bytes(m.path) for m in r.media] for r in records] == [[a, b], [b, a], [a, b]]
    assert sorted(os.listdir(out / "media" / "genai-bench-video")) == [
        "aa.mp4",
        "bb.mp4",
    ]  # each file once
    assert os.path.samefile(
        out / "media" / "genai-bench-video" / "aa.mp4", folder / "videos" / "aa.mp4"
    )  # linked
    assert report.ties == 1


def test_genai_bench_video_parquet_urls(tmp_path):
    folder = tmp_path / "GenAI-Bench" / "video_generation"
    a = write_video(folder / "videos" / "aa.mp4", 0)
    b = write_video(folder / "bb.mp4", 100)
    url = "https://example.org/videos/{}.mp4"
    rows = [
        {"prompt": "p0", "left_model": "m1", "left_video": url.format("aa"),
         "right_model": "m2", "right_video": url.format("bb"), "vote_type": "leftvote"},
        {"prompt": "p1", "left_model": "m1", "left_video": url.format("cc"),
         "right_model": "m2", "right_video": url.format("bb"), "vote_type": "rightvote"},
        {"prompt": "p2", "left_model": "m1", "left_video": url.format("bb"),
         "right_model": "m2", "right_video": url.format("aa"), "vote_type": "bothbad_vote"},
    ]  # fmt: skip
    src = folder / "test-00000-of-00001.parquet"
    write_parquet(src, rows, pa.Table.from_pylist(rows).schema)
    report = import_benchmark(
        "genai-bench-video", str(tmp_path / "GenAI-Bench"), str(tmp_path / "o")
    )
    assert report.sources == [str(src)]
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        f"{src}:row 1: video 'https://example.org/videos/cc.mp4': no local copy 'cc.mp4' in "
    )
    records = _read_back(report)
    assert [(r.benchmark.item_id, r.verdict) for r in records] == [
        ("0", "Video 1 is better"),
        ("2", "tie"),
    ]
    assert [r.benchmark.label for r in records] == ["leftvote", "bothbad_vote"]
    assert [[_bytes(m.path) for m in r.media] for r in records] == [[a, b], [b, a]]


# ------------------------------------------------------------------------- VideoGen-RewardBench
def test_videogen_rewardbench_csv(tmp_path):
    folder = tmp_path / "VideoGen-RewardBench"
    a = write_video(folder / "videos" / "kling" / "k_001.mp4", 0)
    b = write_video(folder / "videos" / "minimax" / "m_001.mp4", 80)
    (folder / "videos" / "minimax" / "broken.mp4").write_bytes(b"not a video")
    ka, mb = "videos/kling/k_001.mp4", "videos/minimax/m_001.mp4"
    rows = [
        videogen_row(ka, mb, "Static camera, a ball rolls.\nSlowly.", "A"),
        videogen_row(mb, ka, "a dog", "B"),
        videogen_row(ka, mb, "a cat", "same"),
        videogen_row(ka, mb, "a fox", "C"),
        videogen_row(ka, "videos/minimax/broken.mp4", "a hen", "A"),
    ]
    src = folder / "videogen-rewardbench.csv"
    write_videogen_csv(src, rows)
    out = tmp_path / "out"
    report = import_benchmark("videogen-rewardbench", str(folder), str(out))
    assert report.sources == [str(src)]
    assert len(report.problems) == 2
    assert report.problems[0] == f"{src}:row 3: Overall 'C' is not 'A', 'B' or 'same'"
    assert (
        report.problems[1].startswith(f"{src}:row 4: ")
        and "cannot decode video" in (report.problems[1])
    )
    assert (report.records, report.ties) == (3, 1)
    records = _read_back(report)
    assert [r.benchmark.item_id for r in records] == ["0", "1", "2"]
    assert [r.prompt for r in records] == [
        "Static camera, a ball rolls.\nSlowly.",
        "a dog",
        "a cat",
    ]
    assert [r.verdict for r in records] == ["Video 1 is better", "Video 2 is better", "tie"]
    assert [_tag(r) for r in records] == [
        ("videogen-rewardbench", "0", None, "A"),
        ("videogen-rewardbench", "1", None, "B"),
        ("videogen-rewardbench", "2", None, "same"),
    ]
    assert [[_bytes(m.path) for m in r.media] for r in records] == [[a, b], [b, a], [a, b]]
    assert records[0].media[0].path == str(
        out / "media" / "videogen-rewardbench" / "videos" / "kling" / "k_001.mp4"
    )
    # the jsonl read without the YAML finds the media too (its folder is the data root)
    direct = list(read_records(report.out_path))
    assert [r.media for r in direct] == [r.media for r in records]


def test_videogen_rewardbench_parquet_copied_and_main_summary(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "vg"
    x = write_video(folder / "videos" / "x.mp4", 0)
    write_video(folder / "videos" / "y.mp4", 90)
    rows = [videogen_row("videos/x.mp4", "videos/y.mp4", "p", "same")]
    src = folder / "eval.parquet"
    write_parquet(src, rows, pa.Table.from_pylist(rows).schema)

    def no_link(*args):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_link)  # another file system: the files are copied
    out = tmp_path / "out"
    assert main("videogen-rewardbench", str(src), str(out)) == 0
    text = capsys.readouterr().out
    assert "videogen-rewardbench: 1 records written to" in text and "ties: 1" in text
    copy = out / "media" / "videogen-rewardbench" / "videos" / "x.mp4"
    assert _bytes(copy) == x and not os.path.samefile(copy, folder / "videos" / "x.mp4")
    assert not [f for f in os.listdir(copy.parent) if f.endswith(".tmp")]


def test_unreadable_shard_is_reported_and_the_others_imported(tmp_path):
    src = tmp_path / "VL-RewardBench" / "data"
    row = vl_row("mmmu_1", {"bytes": image_bytes((1, 2, 3)), "path": None}, [0, 1])
    write_parquet(src / "test-00000-of-00002.parquet", [row], VL_SCHEMA)
    (src / "test-00001-of-00002.parquet").write_bytes(b"PAR1 not really")
    report = import_benchmark("vl-rewardbench", str(tmp_path / "VL-RewardBench"), str(tmp_path))
    assert report.records == 1
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{src / 'test-00001-of-00002.parquet'}: cannot read")


def test_unknown_benchmark_and_missing_source(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown benchmark"):
        import_benchmark("reward-bench", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no vl-rewardbench files found"):
        import_benchmark("vl-rewardbench", str(tmp_path), str(tmp_path / "out"))
    assert main("vl-rewardbench", str(tmp_path / "nope"), str(tmp_path / "out")) == 1
    assert "no such file or folder" in capsys.readouterr().err

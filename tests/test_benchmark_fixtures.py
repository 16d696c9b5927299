"""The four benchmarks as a user's download lays them out (tests/benchmark_fixtures.py) import
whole, all into one OUT_DIR as the README does, each row with its published label and media."""

import os

from tests.benchmark_fixtures import SOURCES, write_downloaded_benchmarks
from urt_jax.data.benchmark_import import import_benchmark
from urt_jax.data.readers import read_records


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_every_downloaded_benchmark_imports(tmp_path):
    bench, out = tmp_path / "bench", tmp_path / "run" / "bench"
    sources = write_downloaded_benchmarks(str(bench))
    assert sources == {name: str(bench / rel) for name, rel in SOURCES.items()}
    assert {name: os.path.relpath(src, bench) for name, src in sources.items()} == {
        "vl-rewardbench": "VL-RewardBench",
        "genai-bench-image": "GenAI-Bench",
        "genai-bench-video": "GenAI-Bench",
        "videogen-rewardbench": "VideoGen-RewardBench",
    }
    reports = {name: import_benchmark(name, src, str(out)) for name, src in sources.items()}
    for report in reports.values():
        assert report.ok, report.summary()

    # each reads only its benchmark's test split, not test_v1, the TSV or the hub's bookkeeping
    assert {
        name: [os.path.relpath(p, bench) for p in r.sources] for name, r in reports.items()
    } == {
        "vl-rewardbench": ["VL-RewardBench/data/test-00000-of-00001.parquet"],
        "genai-bench-image": ["GenAI-Bench/image_generation/test-00000-of-00001.parquet"],
        "genai-bench-video": ["GenAI-Bench/video_generation/test-00000-of-00001.parquet"],
        "videogen-rewardbench": ["VideoGen-RewardBench/videogen-rewardbench.csv"],
    }
    counts = {name: (r.records, r.ties, r.subsets) for name, r in reports.items()}
    assert counts == {
        "vl-rewardbench": (6, 0, {"general": 2, "hallucination": 2, "reasoning": 2}),
        "genai-bench-image": (4, 2, {}),
        "genai-bench-video": (3, 1, {}),
        "videogen-rewardbench": (4, 1, {}),
    }

    records = {name: list(read_records(r.yaml_path)) for name, r in reports.items()}
    vl = records["vl-rewardbench"]
    assert [
        (r.benchmark.item_id, r.benchmark.subset, r.benchmark.label, r.verdict) for r in vl
    ] == [
        ("RLAIF-V-Dataset_1201", "hallucination", [0, 1], "Answer 1 is better"),
        ("RLHF-V_87", "hallucination", [1, 0], "Answer 2 is better"),
        ("mathverse_mini-312", "reasoning", [1, 0], "Answer 2 is better"),
        ("mmmu-pro_45", "reasoning", [0, 1], "Answer 1 is better"),
        ("wildvision-battle_23", "general", [0, 1], "Answer 1 is better"),
        ("vlfeedback_590", "general", [1, 0], "Answer 2 is better"),
    ]
    assert [os.path.splitext(r.media[0].path)[1] for r in vl] == [".png"] * 2 + [".jpg"] + [
        ".png"
    ] * 3
    assert [(r.benchmark.label, r.verdict) for r in records["genai-bench-image"]] == [
        ("leftvote", "Image 1 is better"),
        ("rightvote", "Image 2 is better"),
        ("tievote", "tie"),
        ("bothbad_vote", "tie"),
    ]
    assert [(r.benchmark.label, r.verdict) for r in records["genai-bench-video"]] == [
        ("leftvote", "Video 1 is better"),
        ("tievote", "tie"),
        ("rightvote", "Video 2 is better"),
    ]
    videogen = records["videogen-rewardbench"]
    assert [(r.benchmark.label, r.verdict) for r in videogen] == [
        ("A", "Video 1 is better"),
        ("B", "Video 2 is better"),
        ("same", "tie"),
        ("A", "Video 1 is better"),
    ]

    # the media are the downloaded files, under their published relative paths, none shared
    video_dir = bench / "GenAI-Bench" / "video_generation" / "videos"
    first = records["genai-bench-video"][0].media
    assert [_bytes(m.path) for m in first] == [
        _bytes(video_dir / "3f2a9c01.mp4"),
        _bytes(video_dir / "7be41d52.mp4"),
    ]
    assert videogen[0].media[0].path == str(
        out / "media/videogen-rewardbench/videos/kling1.5/kling1.5_00017.mp4"
    )
    assert _bytes(videogen[0].media[0].path) == _bytes(
        bench / "VideoGen-RewardBench/videos/kling1.5/kling1.5_00017.mp4"
    )
    embedded = [m.path for n in ("vl-rewardbench", "genai-bench-image") for r in records[n]
                for m in r.media]  # fmt: skip
    assert len(embedded) == len(set(embedded)) == 6 + 8  # one OUT_DIR, no image overwritten

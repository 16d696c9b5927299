"""Small stand-ins for the paper's four preference benchmarks, laid out exactly as a user's download
of them looks, and the writers the import tests share (HF parquet with Image structs, the CSV).

``write_downloaded_benchmarks(root)`` leaves under ``root`` what these commands leave there
(``hf download`` is ``huggingface-cli download`` in huggingface_hub before 1.0), with a few rows
each:

    hf download MMInstruction/VL-RewardBench --repo-type dataset --local-dir $BENCH/VL-RewardBench
    hf download TIGER-Lab/GenAI-Bench --repo-type dataset --include "image_generation/*" \\
        --local-dir $BENCH/GenAI-Bench
    hf download TIGER-Lab/GenAI-Bench --repo-type dataset --include "video_generation/*" \\
        --local-dir $BENCH/GenAI-Bench
    # + the test split's videos, fetched by their URLs' file names into
    #   GenAI-Bench/video_generation/videos/ (the loop in docs/evaluation.md)
    hf download KlingTeam/VideoGen-RewardBench --repo-type dataset \\
        --local-dir $BENCH/VideoGen-RewardBench
    cd $BENCH/VideoGen-RewardBench && unzip videos.zip    # videos/<model>/<file>.mp4

that is::

    VL-RewardBench/  .gitattributes  README.md  data/test-00000-of-00001.parquet
                     inference_results.zip  vl_rewardbench.tsv  .cache/huggingface/...
    GenAI-Bench/     image_generation/{test,test_v1}-00000-of-00001.parquet
                     video_generation/{test,test_v1}-00000-of-00001.parquet
                     video_generation/videos/<name>.mp4  .cache/huggingface/...
    VideoGen-RewardBench/  .gitattributes  README.md  videogen-rewardbench.csv  videos.zip
                           videos/<model>/<file>.mp4  .cache/huggingface/...

The files the import reads hold rows in the published schemas (VL-RewardBench 6 rows, 2 per
group; GenAI-Bench image 4 with a ``tievote`` and a ``bothbad_vote``; GenAI-Bench video 3 with
a ``tievote``; VideoGen-RewardBench 4 with one ``same``). The files it never reads (``test_v1``,
the TSV, the inference results, READMEs) are there to be passed over, with placeholder content.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.media_files import encode_video

# ------------------------------------------------------------------------------ writers
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_HF_FEATURES = {
    pa.string(): {"dtype": "string", "_type": "Value"},
    pa.list_(pa.string()): {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    pa.list_(pa.int64()): {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "Sequence"},
    HF_IMAGE: {"_type": "Image"},
}


def hf_schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """A parquet schema as 🤗 datasets writes it: the columns plus their features in the
    ``huggingface`` metadata (which marks the Image columns)."""
    features = {name: _HF_FEATURES[dtype] for name, dtype in fields}
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema(fields, metadata=meta)


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG", size=(28, 28)) -> bytes:
    """An encoded image of one color."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_video(path, level: int, frames: int = 2, size: int = 28) -> bytes:
    """A tiny MPEG-4 of ``frames`` gray frames starting at ``level``; its bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode_video(
        [np.full((size, size, 3), level + 10 * i, np.uint8) for i in range(frames)], str(path)
    )
    with open(path, "rb") as f:
        return f.read()


def write_parquet(path, rows: list[dict], schema: pa.Schema) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path))


# ------------------------------------------------------------------------------ schemas
VL_SCHEMA = hf_schema(
    [
        ("id", pa.string()),
        ("query", pa.string()),
        ("response", pa.list_(pa.string())),
        ("image", HF_IMAGE),
        ("human_ranking", pa.list_(pa.int64())),
        ("models", pa.list_(pa.string())),
        ("judge", pa.string()),
        ("rationale", pa.string()),
        ("query_source", pa.string()),
        ("ground_truth", pa.string()),
    ]
)

GENAI_IMAGE_SCHEMA = hf_schema(
    [
        ("prompt", pa.string()),
        ("left_model", pa.string()),
        ("left_image", HF_IMAGE),
        ("right_model", pa.string()),
        ("right_image", HF_IMAGE),
        ("vote_type", pa.string()),
    ]
)

GENAI_VIDEO_SCHEMA = hf_schema(
    [
        ("prompt", pa.string()),
        ("left_model", pa.string()),
        ("left_video", pa.string()),
        ("right_model", pa.string()),
        ("right_video", pa.string()),
        ("vote_type", pa.string()),
    ]
)

VIDEOGEN_COLUMNS = ["path_A", "path_B", "A_model", "B_model", "prompt", "VQ", "MQ", "TA", "Overall"]
VIDEOGEN_COLUMNS += ["fps_A", "num_frames_A", "fps_B", "num_frames_B"]


def vl_row(
    item_id,
    image,
    ranking,
    query="What is shown?",
    response=("A cat.", "A dog."),
    query_source="src",
) -> dict:
    return {
        "id": item_id,
        "query": query,
        "response": list(response),
        "image": image,
        "human_ranking": ranking,
        "models": ["m1", "m2"],
        "judge": "human",
        "rationale": "",
        "query_source": query_source,
        "ground_truth": "",
    }


def videogen_row(
    a: str, b: str, prompt: str, overall: str, a_model: str = "kling", b_model: str = "minimax"
) -> dict:
    row = dict.fromkeys(VIDEOGEN_COLUMNS, "")
    row |= {"path_A": a, "path_B": b, "A_model": a_model, "B_model": b_model, "prompt": prompt}
    row |= {"VQ": "A", "MQ": "B", "TA": "same", "Overall": overall, "fps_A": "24.0"}
    return row


def write_videogen_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=VIDEOGEN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------ the downloads
# Where each benchmark is, relative to the root, as a user passes it to `urt-jax data import`.
SOURCES = {
    "vl-rewardbench": "VL-RewardBench",
    "genai-bench-image": "GenAI-Bench",
    "genai-bench-video": "GenAI-Bench",
    "videogen-rewardbench": "VideoGen-RewardBench",
}

_COMMIT = "0" * 40


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _hub_bookkeeping(local_dir: str) -> None:
    """The ``.cache/huggingface`` folder ``hf download --local-dir`` keeps beside the files: a
    ``.metadata`` per file downloaded (commit, etag, time)."""
    hf_dir = os.path.join(local_dir, ".cache", "huggingface")
    _write(os.path.join(hf_dir, ".gitignore"), "*")
    _write(
        os.path.join(hf_dir, "CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by huggingface_hub.\n",
    )
    for folder, dirs, files in os.walk(local_dir):
        dirs[:] = [d for d in dirs if d != ".cache" and d != "videos"]  # not from the Hub
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local_dir)
            meta = os.path.join(hf_dir, "download", rel + ".metadata")
            etag = hashlib.sha1(rel.encode()).hexdigest()
            _write(meta, f"{_COMMIT}\n{etag}\n1700000000.0\n")


def _vl_rewardbench(folder: str) -> None:
    images = [
        {"bytes": image_bytes((200, 30, 30)), "path": None},
        {"bytes": image_bytes((30, 200, 30), size=(56, 42)), "path": "RLHF-V_87.png"},
        {"bytes": image_bytes((30, 30, 200), "JPEG", size=(40, 28)), "path": None},
        {"bytes": image_bytes((120, 120, 0), size=(28, 56)), "path": None},
        {"bytes": image_bytes((0, 120, 120), size=(56, 56)), "path": "wildvision_23.png"},
        {"bytes": image_bytes((90, 0, 90)), "path": None},
    ]
    rows = [
        vl_row("RLAIF-V-Dataset_1201", images[0], [0, 1], "Is there a dog?", ("No.", "Yes."),
               "RLAIF-V"),
        vl_row("RLHF-V_87", images[1], [1, 0], "Describe the image.", ("Green.", "Red."),
               "RLHF-V"),
        vl_row("mathverse_mini-312", images[2], [1, 0], "Find x.", ("x = 2", "x = 3"),
               "MathVerse"),
        vl_row("mmmu-pro_45", images[3], [0, 1], "Which option?", ("A", "B"), "MMMU-Pro"),
        vl_row("wildvision-battle_23", images[4], [0, 1], "What color is it?", ("Teal.", "Red."),
               "WildVision"),
        vl_row("vlfeedback_590", images[5], [1, 0], "What is shown?", ("Purple.", "A cat."),
               "VLFeedback"),
    ]  # fmt: skip
    write_parquet(os.path.join(folder, "data", "test-00000-of-00001.parquet"), rows, VL_SCHEMA)
    _write(
        os.path.join(folder, "README.md"),
        "---\npretty_name: VLRewardBench\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: test\n    path: data/test-*\n---\n# Dataset Card for VLRewardBench\n",
    )
    _write(
        os.path.join(folder, ".gitattributes"), "*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    )
    # not read by the import: the VLMEvalKit TSV and the authors' model outputs
    _write(os.path.join(folder, "vl_rewardbench.tsv"), "index\tquestion\tanswer\n")
    with zipfile.ZipFile(os.path.join(folder, "inference_results.zip"), "w") as z:
        z.writestr("inference_results/README.txt", "placeholder\n")
    _hub_bookkeeping(folder)


def _genai_bench(folder: str) -> None:
    images = [image_bytes((25 * i, 100, 200 - 25 * i), size=(28 + 4 * i, 28)) for i in range(8)]

    def image_row(i: int, prompt: str, vote: str) -> dict:
        return {
            "prompt": prompt,
            "left_model": "imagenhub_SDXL_generation",
            "left_image": {"bytes": images[2 * i], "path": None},
            "right_model": "imagenhub_PlayGroundV2_generation",
            "right_image": {"bytes": images[2 * i + 1], "path": None},
            "vote_type": vote,
        }

    gen = os.path.join(folder, "image_generation")
    image_rows = [
        image_row(0, "a red fox in the snow", "leftvote"),
        image_row(1, "a lighthouse at dusk", "rightvote"),
        image_row(2, "two cups of coffee", "tievote"),
        image_row(3, "a robot reading a book", "bothbad_vote"),
    ]
    write_parquet(os.path.join(gen, "test-00000-of-00001.parquet"), image_rows, GENAI_IMAGE_SCHEMA)
    write_parquet(  # the earlier version of the split, not read
        os.path.join(gen, "test_v1-00000-of-00001.parquet"), image_rows[:2], GENAI_IMAGE_SCHEMA
    )

    vid = os.path.join(folder, "video_generation")
    url = "https://example.org/genai-arena/videos/{}.mp4"  # stands in for the published URLs
    names = ["3f2a9c01", "7be41d52", "a0c6e9f3", "d18b7e44"]
    for k, name in enumerate(names):  # fetched by their URLs' file names (docs/evaluation.md)
        write_video(os.path.join(vid, "videos", f"{name}.mp4"), 20 + 50 * k, frames=2 + k % 3)

    def video_row(left: str, right: str, prompt: str, vote: str) -> dict:
        return {"prompt": prompt, "left_model": "fal_StableVideoDiffusion_text2video",
                "left_video": url.format(left), "right_model": "fal_AnimateDiff_text2video",
                "right_video": url.format(right), "vote_type": vote}  # fmt: skip

    video_rows = [
        video_row(names[0], names[1], "a cute dog is playing a ball", "leftvote"),
        video_row(names[2], names[3], "a boat sailing on a calm sea", "tievote"),
        video_row(names[1], names[2], "castle", "rightvote"),
    ]
    write_parquet(os.path.join(vid, "test-00000-of-00001.parquet"), video_rows, GENAI_VIDEO_SCHEMA)
    write_parquet(  # not read; its videos are not fetched either
        os.path.join(vid, "test_v1-00000-of-00001.parquet"),
        [video_row("not_fetched_1", "not_fetched_2", "a kite", "leftvote")],
        GENAI_VIDEO_SCHEMA,
    )
    _hub_bookkeeping(folder)


def _videogen_rewardbench(folder: str) -> None:
    clips = {  # the members of videos.zip, as `unzip videos.zip` puts them
        "videos/kling1.5/kling1.5_00017.mp4": (10, 4),
        "videos/minimax/minimax_00017.mp4": (80, 3),
        "videos/gen3/gen3_00042.mp4": (150, 2),
        "videos/luma1.6/luma1.6_00042.mp4": (210, 2),
    }
    os.makedirs(folder, exist_ok=True)
    with zipfile.ZipFile(os.path.join(folder, "videos.zip"), "w") as z:
        for member, (level, frames) in clips.items():
            z.writestr(member, write_video(os.path.join(folder, member), level, frames))

    k, m, g, lu = clips
    ball, boat = "The camera remains still, a ball rolls.", "A paper boat drifts down a stream."
    rows = [
        videogen_row(k, m, ball, "A", "kling1.5", "minimax"),
        videogen_row(m, k, ball, "B", "minimax", "kling1.5"),
        videogen_row(g, lu, boat, "same", "gen3", "luma1.6"),
        videogen_row(lu, k, boat, "A", "luma1.6", "kling1.5"),
    ]
    write_videogen_csv(os.path.join(folder, "videogen-rewardbench.csv"), rows)
    _write(
        os.path.join(folder, "README.md"), "---\nlicense: apache-2.0\n---\n# VideoGen-RewardBench\n"
    )
    _write(os.path.join(folder, ".gitattributes"), "*.zip filter=lfs diff=lfs merge=lfs -text\n")
    _hub_bookkeeping(folder)


def write_downloaded_benchmarks(root: str) -> dict[str, str]:
    """Writes the four benchmarks under ``root`` as their downloads lay them out (the module's
    docstring); {benchmark name: the SRC a user passes to ``urt-jax data import``}."""
    root = str(root)
    _vl_rewardbench(os.path.join(root, SOURCES["vl-rewardbench"]))
    _genai_bench(os.path.join(root, SOURCES["genai-bench-image"]))
    _videogen_rewardbench(os.path.join(root, SOURCES["videogen-rewardbench"]))
    return {name: os.path.join(root, rel) for name, rel in SOURCES.items()}

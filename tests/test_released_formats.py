"""The released data read unchanged: LLaMA-Factory `messages` and LLaVA `conversations` with
system turns, <image>/<video> tags marking where media go, GRPO records with singular media keys
and video frame lists, exact verdict strings, and the release's dataset YAML."""

import json
import os
import random

import pytest
import yaml
from PIL import Image
from transformers import AutoTokenizer

from urt_jax.data.chat import build_messages
from urt_jax.data.check import check_file
from urt_jax.data.pipeline import InvalidDataError, load_records
from urt_jax.data.readers import (
    read_dataset_yaml,
    read_records,
    release_frame_halves,
    sample_items,
    write_dataset_yaml,
)
from urt_jax.data.records import Media, PreferenceRecord, RecordError
from urt_jax.data.sources import open_records
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import ASSET_DIR
from urt_jax.rewards import extract_answer
from urt_jax.train.rejection import write_released_formats

REPLY = "<think>\nImage 1 is sharper.\n</think>\n<answer>Image 1 is better</answer>"
TEMPLATES = Templates.load()
IMAGE, VIDEO = {"type": "image"}, {"type": "video"}


@pytest.fixture
def root(tmp_path):
    for i in range(20):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / f"f{i}.png")
    return tmp_path


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _one(root, row, name="d.jsonl"):
    """The single record (or error) of a one-line file."""
    (item,) = list(read_records(_write(root / name, [row])))
    return item


def _error(root, row, name="d.jsonl"):
    item = _one(root, row, name)
    assert isinstance(item, RecordError), item
    message = str(item)
    assert f"{name}:1:" in message, message
    return message


def _sft(human, images=("f0.png", "f1.png"), reply=REPLY, **extra):
    return {
        "messages": [
            {"role": "user", "content": human},
            {"role": "assistant", "content": reply},
        ],
        "images": list(images),
        **extra,
    }


# ------------------------------------------------------------------ formats and system turns
def test_messages_format_keeps_its_system_turn(root):
    row = _sft("<image><image>Which is better?")
    row["messages"].insert(0, {"role": "system", "content": "You judge images."})
    record = _one(root, row)
    assert record.system == "You judge images." and record.reply == REPLY
    assert record.task == "image_generation" and record.verdict == "Image 1 is better"
    messages = build_messages(record, TEMPLATES)
    assert messages[0] == {"role": "system", "content": "You judge images."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert build_messages(record, TEMPLATES, include_reply=False)[-1]["role"] == "user"


def test_conversations_system_turn_and_system_field(root):
    turns = [
        {"from": "system", "value": "Be strict."},
        {"from": "human", "value": "Which is better?"},
        {"from": "gpt", "value": REPLY},
    ]
    images = ["f0.png", "f1.png"]
    record = _one(root, {"conversations": turns, "images": images})
    assert record.system == "Be strict."
    record = _one(root, {"conversations": turns[1:], "images": images, "system": "Be fair."})
    assert record.system == "Be fair."
    assert build_messages(record, TEMPLATES)[0] == {"role": "system", "content": "Be fair."}
    # no system prompt: no system message (the chat template adds its default one)
    record = _one(root, {"conversations": turns[1:], "images": images})
    assert record.system is None
    assert build_messages(record, TEMPLATES)[0]["role"] == "user"
    message = _error(root, {"conversations": turns, "images": images, "system": "Be fair."})
    assert "not both" in message


def test_multi_turn_records_are_refused(root):
    row = _sft("Which is better?")
    row["messages"] += [
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": REPLY},
    ]
    message = _error(root, row)
    assert "2 user and 2 assistant turns" in message
    assert "only single-turn records" in message


@pytest.mark.parametrize(
    "turns, reason",
    [
        ([{"role": "assistant", "content": REPLY}, {"role": "user", "content": "q"}], "found"),
        ([{"role": "user", "content": "q"}], "one assistant reply; found ['user']"),
        ([{"role": "tool", "content": "q"}], "role 'tool' is not one of"),
        ([{"role": "user", "content": ["q"]}, {"role": "assistant", "content": REPLY}], "must be"),
    ],
)
def test_malformed_dialogues_are_named(root, turns, reason):
    assert reason in _error(root, {"messages": turns, "images": ["f0.png", "f1.png"]})


# ----------------------------------------------------------------------------- media tags
def test_tags_place_the_media_in_the_text(root):
    record = _one(root, _sft("Caption: a cat.\n<image>\nversus\n<image>\nWhich is better?"))
    assert record.user_text == "Caption: a cat.\n<image>\nversus\n<image>\nWhich is better?"
    content = build_messages(record, TEMPLATES)[0]["content"]
    assert content == [
        {"type": "text", "text": "Caption: a cat.\n"},
        IMAGE,
        {"type": "text", "text": "\nversus\n"},
        IMAGE,
        {"type": "text", "text": "\nWhich is better?"},
    ]


def test_tags_render_as_llama_factory_does(root):
    """The chat renders exactly the source text with each tag replaced by the medium's
    vision tokens, which is what LLaMA-Factory's Qwen2-VL template does."""
    text = "<image>\n<image>\nCompare them.\nCaption: two dogs"
    record = _one(root, _sft(text))
    tokenizer = AutoTokenizer.from_pretrained(ASSET_DIR, local_files_only=True)
    rendered = tokenizer.apply_chat_template(
        build_messages(record, TEMPLATES, include_reply=False), tokenize=False
    )
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert f"<|im_start|>user\n{text.replace('<image>', vision)}<|im_end|>" in rendered


def test_leading_tags_equal_media_first(root):
    tagged = _one(root, _sft("<image><image>Which is better?"))
    plain = _one(root, _sft("Which is better?"))
    want = [IMAGE, IMAGE, {"type": "text", "text": "Which is better?"}]
    assert build_messages(tagged, TEMPLATES)[0]["content"] == want
    assert build_messages(plain, TEMPLATES)[0]["content"] == want


def test_video_tags(root):
    row = _sft("Question?\n<video>", images=(), reply=REPLY.replace("Image", "Answer"))
    row["videos"] = [["f0.png", "f1.png", "f2.png"]]
    record = _one(root, row)
    assert record.task == "video_understanding" and record.media[0].frames is not None
    content = build_messages(record, TEMPLATES)[0]["content"]
    assert content == [{"type": "text", "text": "Question?\n"}, VIDEO]


@pytest.mark.parametrize(
    "row, counts",
    [
        (_sft("<image>Which is better?"), "1 <image> tag(s) but the record has 2 image(s)"),
        (_sft("<image><image><image>?"), "3 <image> tag(s) but the record has 2 image(s)"),
        (
            {
                "problem": "<image>?",
                "solution": "Image 1 is better",
                "images": ["f0.png", "f1.png"],
            },
            "1 <image> tag(s) but the record has 2 image(s)",
        ),
        (
            {"problem": "<video>?", "solution": "Answer 1 is better", "image": "f0.png"},
            "0 <image> tag(s) but the record has 1 image(s)",
        ),
    ],
)
def test_tag_counts_must_match_the_media(root, row, counts):
    assert counts in _error(root, row)


def test_media_items_follow_record_media_order(root):
    """The contract the example builder relies on: one exact {"type": kind} item per medium,
    in record.media order."""
    record = _one(root, _sft("A\n<image>B<image>", images=("f3.png", "f1.png")))
    content = build_messages(record, TEMPLATES)[0]["content"]
    media_items = [c for c in content if c["type"] != "text"]
    assert media_items == [{"type": m.kind} for m in record.media]
    assert [m.path for m in record.media] == [str(root / "f3.png"), str(root / "f1.png")]


def test_native_prompts_are_rendered_media_first(root):
    record = PreferenceRecord(
        "n",
        "image_generation",
        "pairwise",
        "Image 1 is better",
        media=(Media("image", path="a.png"), Media("image", path="b.png")),
        prompt="a <image> tag in a caption",
        system="Judge.",
    ).validate()
    messages = build_messages(record, TEMPLATES)
    assert messages[0] == {"role": "system", "content": "Judge."}
    assert messages[1]["content"][:2] == [IMAGE, IMAGE]
    assert len(messages[1]["content"]) == 3


# ------------------------------------------------------------------------------- GRPO media
def test_grpo_singular_image_and_video(root):
    record = _one(root, {"problem": "Q?", "solution": "Answer 2 is better", "image": "f0.png"})
    assert record.task == "image_understanding" and record.media == (
        Media("image", path=str(root / "f0.png")),
    )
    record = _one(root, {"problem": "Q?", "solution": "Answer 1 is better", "video": "clip.mp4"})
    assert record.task == "video_understanding"
    assert record.media == (Media("video", path=str(root / "clip.mp4")),)
    content = build_messages(record, TEMPLATES)[0]["content"]
    assert content == [VIDEO, {"type": "text", "text": "Q?"}]
    both = {"image": "f0.png", "images": ["f1.png"]}
    message = _error(root, {"problem": "Q?", "solution": "Answer 1 is better", **both})
    assert "give 'image' or 'images', not both" in message


@pytest.mark.parametrize(
    "n, first, second",
    [
        (2, [0], [1]),
        (6, [0, 1, 2], [3, 4, 5]),
        (8, [0, 1, 2, 3], [4, 5, 6, 7]),
        (9, [0, 1, 2, 3], [4, 5, 6, 7]),
        (11, [0, 1, 2, 3], [5, 6, 7, 8]),  # the first half's step (5/4) serves both halves
        (12, [0, 1, 3, 4], [6, 7, 9, 10]),
        (20, [0, 2, 5, 7], [10, 12, 15, 17]),
    ],
)
def test_grpo_video_frame_lists_split_as_the_release_does(root, n, first, second):
    assert release_frame_halves(list(range(n))) == (first, second)
    row = {
        "problem": "Which video is better?",
        "solution": "Video 2 is better",
        "images": [f"f{i}.png" for i in range(n)],
    }
    record = _one(root, row)
    assert record.task == "video_generation" and record.mode == "pairwise"
    assert [m.kind for m in record.media] == ["video", "video"]
    assert [list(m.frames) for m in record.media] == [
        [str(root / f"f{i}.png") for i in half] for half in (first, second)
    ]
    content = build_messages(record, TEMPLATES)[0]["content"]
    assert content == [VIDEO, VIDEO, {"type": "text", "text": "Which video is better?"}]


def test_grpo_video_frame_list_needs_two_frames(root):
    row = {"problem": "?", "solution": "Video 1 is better", "images": ["f0.png"]}
    assert "found 1 frame(s)" in _error(root, row)


# ----------------------------------------------------------------------------- verdicts
def test_extract_answer_takes_the_first_answer_stripped():
    assert extract_answer("<answer> Image 1 is better \n</answer><answer>x</answer>") == (
        "Image 1 is better"
    )
    assert extract_answer("<think>a</think>\n<answer>\nImage 2 is better</answer>") == (
        "Image 2 is better"
    )


@pytest.mark.parametrize(
    "solution",
    [" Image 1 is better", "image 1 is better", "<answer>Image 1 is better</answer>", "Image 1"],
)
def test_grpo_solution_must_be_exactly_an_accepted_string(root, solution):
    message = _error(root, {"problem": "?", "solution": solution, "images": ["f0.png", "f1.png"]})
    assert f"solution {solution!r} is not an accepted verdict" in message
    assert "'Image 1 is better', 'Image 2 is better'" in message and "'Score: N'" in message


def test_sft_verdict_is_the_first_answer_stripped(root):
    reply = "<think>x</think>\n<answer>  Image 2 is better\n</answer> <answer>Image 1 is better"
    assert _one(root, _sft("?", reply=reply)).verdict == "Image 2 is better"
    message = _error(root, _sft("?", reply="<think>x</think><answer>Image 3 is better</answer>"))
    assert "the reply's <answer> 'Image 3 is better' is not an accepted verdict" in message
    assert "'Video 1 is better'" in message
    message = _error(root, _sft("?", reply="<think>I prefer the first.</think>"))
    assert "has no <answer>...</answer>" in message and "not an accepted verdict" in message


def test_native_reply_must_agree_with_its_verdict(root):
    row = {
        "task": "image_generation",
        "prompt": "a cat",
        "images": ["f0.png", "f1.png"],
        "verdict": "Image 2 is better",
        "reply": REPLY,
    }
    message = _error(root, row)
    assert "'Image 1 is better' disagrees with the verdict 'Image 2 is better'" in message
    message = _error(root, {**row, "reply": "<think>x</think>"})
    assert "no <answer>...</answer> with the verdict 'Image 2 is better'" in message
    assert _one(root, {**row, "verdict": "Image 1 is better"}).reply == REPLY


# --------------------------------------------------------------------------- dataset YAML
def _grpo_rows(n, solution="Image 1 is better"):
    return [
        {"id": f"r{i}", "problem": f"p{i}", "solution": solution, "images": ["a.png", "b.png"]}
        for i in range(n)
    ]


@pytest.fixture
def release_tree(tmp_path):
    """The release's layout: dataset/<name>/<json>, its media in an image folder."""
    for name in ("HPD", "OIP"):
        folder = tmp_path / "dataset" / name / "images"
        folder.mkdir(parents=True)
        for img in ("a.png", "b.png"):
            Image.new("RGB", (8, 8)).save(folder / img)
    _write(tmp_path / "dataset" / "HPD" / "grpo.jsonl", _grpo_rows(4))
    array = "[\n" + ",\n".join(json.dumps(r) for r in _grpo_rows(3)) + "\n]\n"
    (tmp_path / "dataset" / "OIP" / "grpo.json").write_text(array)  # record i on line i + 2
    return tmp_path


def _yaml(path, entries):
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path


def test_dataset_yaml_paths_resolve_from_the_working_directory(release_tree, monkeypatch):
    # the release writes its paths relative to the directory the trainer runs in
    elsewhere = release_tree / "configs"
    elsewhere.mkdir()
    spec = _yaml(
        elsewhere / "grpo.yaml",
        [
            {"json_path": "dataset/HPD/grpo.jsonl", "image_folder": "dataset/HPD/images"},
            {
                "json_path": "dataset/OIP/grpo.json",
                "image_folder": "dataset/OIP/images",
                "sampling_strategy": "first:2",
            },
        ],
    )
    monkeypatch.chdir(release_tree)
    records = load_records(str(spec))
    assert [r.id for r in records] == ["r0", "r1", "r2", "r3", "r0", "r1"]
    assert records[0].media[0].path == str(release_tree / "dataset/HPD/images/a.png")
    assert records[5].media[1].path == str(release_tree / "dataset/OIP/images/b.png")
    assert records[0].source == str(release_tree / "dataset/HPD/grpo.jsonl") + ":1"
    assert records[5].source == str(release_tree / "dataset/OIP/grpo.json") + ":3"


def test_dataset_yaml_paths_fall_back_to_the_yaml_directory(
    release_tree, tmp_path_factory, monkeypatch
):
    spec = _yaml(
        release_tree / "dataset" / "grpo.yml",
        [{"json_path": "HPD/grpo.jsonl", "image_folder": "HPD/images"}],
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    records = open_records(str(spec), data_root="/nowhere")  # image_folder wins
    assert len(records) == 4
    assert records[0].media[0].path == str(release_tree / "dataset/HPD/images/a.png")


@pytest.mark.parametrize(
    "strategy, ids",
    [
        ("all", ["r0", "r1", "r2", "r3"]),
        ("first:3", ["r0", "r1", "r2"]),
        ("end:1", ["r3"]),
        ("end:9", ["r0", "r1", "r2", "r3"]),
        ("first:50%", ["r0", "r1"]),
        ("end:60%", ["r1", "r2", "r3"]),  # ceil(0.6 * 4) = 3
    ],
)
def test_sampling_strategies(release_tree, strategy, ids):
    entry = {"json_path": "HPD/grpo.jsonl", "image_folder": "HPD/images"}
    spec = _yaml(release_tree / "dataset" / "s.yaml", [{**entry, "sampling_strategy": strategy}])
    assert [r.id for r in load_records(str(spec))] == ids


def test_random_sampling_is_a_seeded_shuffle(release_tree):
    entry = {"json_path": "HPD/grpo.jsonl", "image_folder": "HPD/images"}
    spec = _yaml(release_tree / "dataset" / "r.yaml", [{**entry, "sampling_strategy": "random:3"}])
    first = [r.id for r in load_records(str(spec))]
    assert first == [r.id for r in load_records(str(spec))]
    order = [f"r{i}" for i in range(4)]
    random.Random(0).shuffle(order)
    assert first == order[:3]
    assert sample_items(list(range(10)), "random:25%") == sample_items(list(range(10)), "random:3")


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"json_path": "HPD/grpo.jsonl", "sampling_strategy": "middle:3"}, "sampling_strategy"),
        ({"json_path": "HPD/grpo.jsonl", "sampling_strategy": "first:0"}, "sampling_strategy"),
        ({"json_path": "HPD/grpo.jsonl", "image_dir": "HPD"}, "unknown key(s) ['image_dir']"),
        ({"image_folder": "HPD"}, "missing field 'json_path'"),
        ({"json_path": "HPD/other.yaml"}, "must be a .json or .jsonl file"),
    ],
)
def test_bad_dataset_yaml_entries_are_named(release_tree, entry, reason):
    spec = _yaml(release_tree / "dataset" / "bad.yaml", [{"json_path": "OIP/grpo.json"}, entry])
    with pytest.raises(RecordError) as info:
        list(read_records(spec))
    assert "bad.yaml: datasets[1]" in str(info.value) and reason in str(info.value)


def test_dataset_yaml_errors_name_the_json_file_and_line(release_tree):
    rows = _grpo_rows(2) + _grpo_rows(1, solution="image 1 is better")
    _write(release_tree / "dataset" / "HPD" / "grpo.jsonl", rows)
    spec = _yaml(
        release_tree / "dataset" / "e.yaml",
        [{"json_path": "HPD/grpo.jsonl", "image_folder": "HPD/images"}],
    )
    with pytest.raises(InvalidDataError, match=r"HPD/grpo\.jsonl:3: solution 'image 1 is"):
        load_records(str(spec))
    report = check_file(str(spec))
    assert report.records == 3 and len(report.problems) == 1
    assert "HPD/grpo.jsonl:3:" in report.problems[0]
    missing = _yaml(release_tree / "dataset" / "m.yaml", [{"json_path": "HPD/none.jsonl"}])
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        list(read_records(missing))


def test_write_dataset_yaml_reads_back(release_tree):
    path = release_tree / "out" / "data.yaml"
    json_path = str(release_tree / "dataset" / "OIP" / "grpo.json")
    write_dataset_yaml(str(path), json_path, str(release_tree / "dataset" / "OIP" / "images"))
    (entry,) = read_dataset_yaml(path)
    assert entry.json_path == json_path and entry.sampling_strategy == "all"
    assert [r.id for r in load_records(str(path))] == ["r0", "r1", "r2"]


# ----------------------------------------------------------------- rejection sampling output
def _native(root, rid, verdict="Image 1 is better", system=None):
    return PreferenceRecord(
        rid,
        "image_generation",
        "pairwise",
        verdict,
        media=(
            Media("image", path=str(root / "f0.png")),
            Media("image", path=str(root / "f1.png")),
        ),
        prompt=f"a cat {rid}",
        source=f"x:{rid}",
        system=system,
    ).validate()


def test_rejection_output_renders_the_sampled_prompt(root, tmp_path_factory):
    tagged = _one(root, _sft("Caption\n<image>\nvs\n<image>", images=("f2.png", "f3.png")))
    sampled = [_native(root, "a", system="Judge."), tagged, _native(root, "b")]
    out = tmp_path_factory.mktemp("rs")
    sft_path, grpo_path = str(out / "sft.jsonl"), str(out / "grpo.jsonl")
    write_released_formats(
        [(r, REPLY) for r in sampled], sampled, TEMPLATES, str(root), sft_path, grpo_path
    )
    rows = [json.loads(x) for x in open(sft_path)]
    assert rows[0]["conversations"][0] == {"from": "system", "value": "Judge."}
    assert rows[0]["conversations"][1]["value"] == "<image><image>" + TEMPLATES.render(sampled[0])
    assert rows[1]["conversations"][0]["value"] == "Caption\n<image>\nvs\n<image>"
    problems = [json.loads(x)["problem"] for x in open(grpo_path)]
    assert problems[0] == TEMPLATES.render(sampled[0]) and "<image>" not in problems[0]
    assert problems[1] == "Caption\n<image>\nvs\n<image>"  # its tags place the media
    for name in ("sft", "grpo"):
        spec = yaml.safe_load(open(out / f"{name}.yaml"))
        assert spec == {
            "datasets": [
                {
                    "json_path": str(out / f"{name}.jsonl"),
                    "image_folder": os.path.realpath(root),
                    "sampling_strategy": "all",
                }
            ]
        }
        # the YAML alone finds the media, and the prompts are the ones sampled
        back = load_records(str(out / f"{name}.yaml"))
        for want, got in zip(sampled, back, strict=True):
            assert [m.path for m in got.media] == [m.path for m in want.media]
            assert got.system == want.system and got.verdict == want.verdict
            prompt = build_messages(want, TEMPLATES, include_reply=False)
            assert build_messages(got, TEMPLATES, include_reply=False) == prompt


def test_rejection_output_of_yaml_records_with_media_outside_the_data_root(
    release_tree, monkeypatch
):
    """Records read through a YAML whose image folders lie outside the data root (the YAML's
    directory) are written relative to a folder holding them all, which the YAML names."""
    configs = release_tree / "configs"
    configs.mkdir()
    spec = _yaml(
        configs / "train.yaml",
        [
            {"json_path": "dataset/HPD/grpo.jsonl", "image_folder": "dataset/HPD/images"},
            {"json_path": "dataset/OIP/grpo.json", "image_folder": "dataset/OIP/images"},
        ],
    )
    monkeypatch.chdir(release_tree)
    records = load_records(str(spec))
    out = release_tree / "rs"
    paths = str(out / "sft.jsonl"), str(out / "grpo.jsonl")
    write_released_formats([(records[0], REPLY)], records, TEMPLATES, str(configs), *paths)
    (entry,) = read_dataset_yaml(out / "grpo.yaml")
    assert entry.image_folder == os.path.realpath(release_tree / "dataset")
    back = load_records(str(out / "grpo.yaml"))
    assert [[m.path for m in r.media] for r in back] == [[m.path for m in r.media] for r in records]
    assert [m.path for m in load_records(str(out / "sft.yaml"))[0].media] == [
        m.path for m in records[0].media
    ]

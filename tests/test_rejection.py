"""Rejection sampling keeps exactly the correct samples for SFT and the wrong prompts for GRPO,
in the released formats that the readers load back."""

import os

import pytest

from urt_jax.data.chat import build_messages
from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.pipeline import load_records
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.readers import read_records
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import load_tokenizer
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.sharding.init import init_model
from urt_jax.train.rejection import (
    RejectionOptions,
    generate_completions,
    split_samples,
    write_released_formats,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = os.path.join(ROOT, "configs", "templates", "short.yaml")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("rs")
    paths = write_synthetic(
        str(out), 8, 2, seed=6, cfg=SyntheticConfig(image_size=56, num_frames=4)
    )
    return load_records(paths["train"], str(out))[:4], str(out)


def _reply(verdict, well_formed=True):
    text = f"<think>\nscores\n</think>\n<answer>{verdict}</answer>"
    return text if well_formed else f"{verdict}"


def test_split_keeps_exactly_the_correct_samples(records):
    recs, _ = records
    flip = {
        "Image 1 is better": "Image 2 is better",
        "Image 2 is better": "Image 1 is better",
        "Video 1 is better": "Video 2 is better",
        "Video 2 is better": "Video 1 is better",
        "Answer 1 is better": "Answer 2 is better",
        "Answer 2 is better": "Answer 1 is better",
    }
    completions = [
        [_reply(recs[0].verdict), _reply(recs[0].verdict)],  # all right
        [_reply(recs[1].verdict), _reply(flip[recs[1].verdict])],  # one right, one wrong
        [_reply(flip[recs[2].verdict]), _reply(flip[recs[2].verdict])],  # all wrong
        [_reply(recs[3].verdict, well_formed=False), _reply(recs[3].verdict)],  # one malformed
    ]
    sft, grpo, stats = split_samples(recs, completions, RejectionOptions())
    assert [(r.id, c) for r, c in sft] == [
        (recs[0].id, completions[0][0]),
        (recs[0].id, completions[0][1]),
        (recs[1].id, completions[1][0]),
        (recs[3].id, completions[3][1]),
    ]
    assert [r.id for r in grpo] == [recs[1].id, recs[2].id, recs[3].id]
    assert stats["correct_samples"] == 4 and stats["samples"] == 8
    _, grpo_all, _ = split_samples(recs, completions, RejectionOptions(grpo_prompts="all_wrong"))
    assert [r.id for r in grpo_all] == [recs[2].id]


def test_released_formats_read_back(records, tmp_path):
    recs, root = records
    templates = Templates.load(SHORT)
    sft = [(recs[0], _reply(recs[0].verdict))]
    grpo = recs[1:3]
    write_released_formats(
        sft, grpo, templates, root, str(tmp_path / "sft.jsonl"), str(tmp_path / "grpo.jsonl")
    )
    back_sft = list(read_records(tmp_path / "sft.jsonl", root))
    back_grpo = list(read_records(tmp_path / "grpo.jsonl", root))
    assert back_sft[0].reply == sft[0][1] and back_sft[0].verdict == recs[0].verdict
    # the SFT text renders to exactly the prompt the record was sampled with
    prompt = build_messages(recs[0], templates, include_reply=False)
    assert build_messages(back_sft[0], templates, include_reply=False) == prompt
    assert back_sft[0].user_text.startswith("<image><image>Compare")
    assert [m.path or m.frames for m in back_sft[0].media] == [
        m.path or m.frames for m in recs[0].media
    ]
    for want, got in zip(grpo, back_grpo, strict=True):
        assert got.verdict == want.verdict and got.task == want.task
        assert got.user_text == templates.render(want)
        assert [m.path or m.frames for m in got.media] == [m.path or m.frames for m in want.media]
        assert build_messages(got, templates, False) == build_messages(want, templates, False)
    # the YAML beside each file finds the media without a data root
    for name, back in (("sft", back_sft), ("grpo", back_grpo)):
        assert list(read_records(tmp_path / f"{name}.yaml")) == back


def test_generation_with_a_model(records):
    recs, _ = records
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    tokenizer = load_tokenizer()
    builder = ExampleBuilder(
        tokenizer,
        Templates.load(SHORT),
        config,
        ProcessorConfig(max_pixels=3136, max_frames=4),
        include_reply=False,
    )
    outs = generate_completions(
        init_model(config, seed=0),
        tokenizer,
        recs[:2],
        builder,
        RejectionOptions(samples_per_prompt=3, max_new_tokens=5, batch_size=2),
    )
    assert [len(o) for o in outs] == [3, 3]
    assert all(isinstance(c, str) for o in outs for c in o)

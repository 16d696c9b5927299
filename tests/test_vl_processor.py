"""urt_jax.Processor: everything from the checkpoint directory (tokenizer, chat template, pixel
settings, eos ids) unless overridden; chat messages with images and videos -> model inputs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import urt_jax
from tests.qwen_checkpoint import PREPROCESSOR_CONFIG, write_qwen_tokenizer
from urt_jax.data.processor import process_image, process_video
from urt_jax.data.vl_processor import ProcessorError
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.resources import DEMO_TOKENIZER_DIR, TINY_MODEL_CONFIG


@pytest.fixture
def demo_dir(tmp_path):
    """A model directory with the demo tokenizer and Hub-style processor files."""
    out = tmp_path / "model"
    shutil.copytree(DEMO_TOKENIZER_DIR, out)
    pre = {**PREPROCESSOR_CONFIG, "max_pixels": 12544}
    (out / "preprocessor_config.json").write_text(json.dumps(pre))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [4002, 4000]}))
    return out


def _chat(*content, reply=None):
    messages = [{"role": "user", "content": list(content)}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return messages


def test_settings_come_from_the_checkpoint_unless_overridden(demo_dir):
    p = urt_jax.Processor.from_pretrained(demo_dir)
    assert (p.pixels.min_pixels, p.pixels.max_pixels, p.pixels.video_max_pixels) == (
        3136,
        12544,
        12544,
    )
    assert p.eos_token_ids == (4002, 4000)
    (demo_dir / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 6272, "longest_edge": 50176}})
    )
    p = urt_jax.Processor.from_pretrained(demo_dir)
    assert (p.pixels.video_min_pixels, p.pixels.video_max_pixels) == (6272, 50176)
    p = urt_jax.Processor.from_pretrained(demo_dir, max_pixels=3136, max_frames=2)
    assert p.pixels.max_pixels == p.pixels.video_max_pixels == 3136 and p.pixels.max_frames == 2
    (demo_dir / "generation_config.json").unlink()
    assert urt_jax.Processor.from_pretrained(demo_dir).eos_token_ids == (4002,)  # <|im_end|>


def test_the_processors_chat_template_wins_over_the_tokenizers(demo_dir):
    (demo_dir / "chat_template.jinja").unlink()
    (demo_dir / "chat_template.json").write_text(
        json.dumps({"chat_template": "{% for m in messages %}[{{ m['role'] }}]{% endfor %}"})
    )
    p = urt_jax.Processor.from_pretrained(demo_dir)
    assert (
        p.tokenizer.decode(p.encode(_chat({"type": "text", "text": "hi"}))["input_ids"]) == "[user]"
    )


def test_a_tokenizer_from_another_model_is_refused(tmp_path):
    qwen = tmp_path / "qwen"
    write_qwen_tokenizer(str(qwen))
    p = urt_jax.Processor.from_pretrained(qwen)
    with pytest.raises(ProcessorError, match=r"maps <\|image_pad\|> to 151655 .* is 4012"):
        p.check_model(Qwen25VLConfig.from_yaml(TINY_MODEL_CONFIG))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProcessorError, match="no tokenizer files"):
        urt_jax.Processor.from_pretrained(empty)


def test_messages_become_model_inputs(demo_dir):
    """Images and a video in one turn, a batch padded on either side; the pixels are exactly
    the image and video processors', the placeholders expanded to the merged patch counts."""
    p = urt_jax.Processor.from_pretrained(demo_dir)
    red, blue = Image.new("RGB", (56, 84), "red"), Image.new("RGB", (112, 56), "blue")
    frames = [Image.new("RGB", (56, 56), (40 * i, 0, 0)) for i in range(6)]
    first = _chat(
        {"type": "image", "image": red},
        {"type": "text", "text": "and"},
        {"type": "video", "video": frames, "fps": 4.0},
        {"type": "image", "image": blue},
        {"type": "text", "text": "Which is better?"},
    )
    second = _chat({"type": "text", "text": "No media here."})
    for side in ("left", "right"):
        batch = p([first, second], padding_side=side, return_mm_token_type_ids=True)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == mask.shape and ids.shape[0] == 2
        short = mask[1].sum()
        assert (mask[1, -short:] == 1).all() if side == "left" else (mask[1, :short] == 1).all()
        types = batch["mm_token_type_ids"]
        assert ((types == 1) == (ids == p.image_token_id)).all()
        assert ((types == 2) == (ids == p.video_token_id)).all()
    want_red, grid_red = process_image(red, p.pixels)
    want_blue, grid_blue = process_image(blue, p.pixels)
    sampled = [frames[i] for i in np.floor(np.arange(6) * 1.0).astype(int)]
    want_video, vgrid, spg = process_video(sampled, 4.0, p.pixels)
    np.testing.assert_array_equal(batch["pixel_values"], np.concatenate([want_red, want_blue]))
    np.testing.assert_array_equal(batch["image_grid_thw"], np.stack([grid_red, grid_blue]))
    np.testing.assert_array_equal(batch["pixel_values_videos"], want_video)
    np.testing.assert_allclose(batch["second_per_grid_ts"], [spg])
    n_image = (np.prod(grid_red) + np.prod(grid_blue)) // 4
    assert (batch["input_ids"][0] == p.image_token_id).sum() == n_image
    assert (batch["input_ids"][0] == p.video_token_id).sum() == np.prod(vgrid) // 4


def test_a_reply_is_the_only_target(demo_dir):
    p = urt_jax.Processor.from_pretrained(demo_dir)
    reply = "<think>red</think>\n<answer>Image 1 is better</answer>"
    enc = p.encode(_chat({"type": "text", "text": "Judge."}, reply=reply))
    targets = enc["input_ids"][enc["loss_mask"]]
    assert p.tokenizer.decode(targets) == reply + "<|im_end|>"
    assert enc["prompt_length"] == np.argmax(enc["loss_mask"])
    with pytest.raises(ValueError, match="add_generation_prompt"):
        p.encode(_chat({"type": "text", "text": "Judge."}, reply=reply), add_generation_prompt=True)

"""Chat token ids and label masks equal transformers' (chat template + processor expansion)."""

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from urt_jax.data.chat import build_messages, encode_chat, expand_placeholders
from urt_jax.data.records import Media, PreferenceRecord
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import ASSET_DIR, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSET_DIR, local_files_only=True)


def _record():
    return PreferenceRecord(
        "r0",
        "image_generation",
        "pairwise",
        "Image 2 is better",
        media=(Media("image", path="a.png"), Media("image", path="b.png")),
        prompt="two red circles on a gray background",
        reply="<think>\n1. Semantic consistency: Image 1 (3/10) - the color is blue, not red; "
        "Image 2 (9/10) - shows two red circles\nTotal score:\nImage 1: 3+7+7=17\n"
        "Image 2: 9+7+8=24\n</think>\n<answer>Image 2 is better</answer>",
    )


def _processor_like_expansion(tokenizer, text, images):
    """What Qwen2_5_VLProcessor does: each <|image_pad|> -> grid.prod() // merge**2 copies."""
    grids = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=147456)(
        images=images, return_tensors="np"
    )["image_grid_thw"]
    pieces = text.split("<|image_pad|>")
    out = pieces[0]
    for grid, rest in zip(grids, pieces[1:], strict=True):
        out += "<|image_pad|>" * int(np.prod(grid) // 4) + rest
    return out, [int(np.prod(g) // 4) for g in grids]


def test_two_image_chat_matches_transformers(tokenizer):
    record = _record()
    messages = build_messages(record, Templates.load())
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((56, 84), (112, 56))
    ]
    # transformers: the chat template, the processor's placeholder expansion, the tokenizer
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    expanded, counts = _processor_like_expansion(tokenizer, text, images)
    want_ids = tokenizer(expanded)["input_ids"]
    # transformers' assistant mask (from the template's generation markers), on the unexpanded
    # chat; expansion inserts pads before the reply, so the mask shifts by the inserted count.
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    inserted = sum(counts) - len(counts)
    want_mask = np.array([0] * inserted + list(out["assistant_masks"]), bool)

    got = encode_chat(tokenizer, messages, image_tokens=counts)
    np.testing.assert_array_equal(got.input_ids, want_ids)
    np.testing.assert_array_equal(got.loss_mask, want_mask)
    assert got.loss_mask.sum() > 20
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((got.input_ids == image_pad).sum()) == sum(counts) == 6 + 8
    # the targets are the reply and <|im_end|>, nothing of the prompt
    target = tokenizer.decode(got.input_ids[got.loss_mask])
    assert target == record.reply + "<|im_end|>"
    assert got.prompt_length == int(np.argmax(got.loss_mask))


def test_prompt_only_has_no_targets(tokenizer):
    messages = build_messages(_record(), Templates.load(), include_reply=False)
    got = encode_chat(tokenizer, messages, image_tokens=[4, 4])
    assert not got.loss_mask.any()
    assert tokenizer.decode(got.input_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_placeholder_count_mismatch():
    with pytest.raises(ValueError, match=r"2 <\|image_pad\|> placeholders but 1"):
        expand_placeholders("<|image_pad|><|image_pad|>", [3], [])


def test_shipped_tokenizer_has_qwen_special_tokens(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(4000, 4000 + len(SPECIAL_TOKENS)))
    text = "Image 1 is better <think>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

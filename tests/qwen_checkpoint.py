"""A tiny Qwen2.5-VL checkpoint directory laid out as the Hub's: weights written by transformers,
Qwen's real BPE tokenizer (tests/assets), the Qwen2-VL chat template, preprocessor_config.json and
generation_config.json with the published values."""

from __future__ import annotations

import json
import lzma
import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

# Qwen2.5-VL's special token ids (the published checkpoints).
ENDOFTEXT, IM_END = 151643, 151645

# The chat template of the published Qwen2-VL / Qwen2.5-VL processors (chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

GENERATION_CONFIG = {
    "bos_token_id": ENDOFTEXT,
    "pad_token_id": ENDOFTEXT,
    "do_sample": True,
    "eos_token_id": [IM_END, ENDOFTEXT],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_k": 1,
    "top_p": 0.001,
}


def write_qwen_tokenizer(out_dir: str) -> None:
    """tokenizer.json and a Hub-style tokenizer_config.json (with the chat template)."""
    os.makedirs(out_dir, exist_ok=True)
    with lzma.open(os.path.join(ASSETS, "qwen_tokenizer.json.xz"), "rb") as f:
        tokenizer = json.loads(f.read())
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    decoder = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "special")}
        | {"single_word": False}
        for t in tokenizer["added_tokens"]
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_qwen_checkpoint(out_dir: str, seed: int = 0) -> str:
    """The whole directory, as a user downloads it from the Hub: a flat config.json, the legacy
    key layout, tied embeddings as the 3B's, tiny random weights with randomised norms."""
    from tests import hf_reference as ref

    config = ref.tiny_config(tie_word_embeddings=True, vocab_size=151936, vision_depth=2)
    ref.save_model(ref.make_model(config, seed), out_dir, config_style="flat")
    write_qwen_tokenizer(out_dir)
    for name, data in (
        ("chat_template.json", {"chat_template": QWEN2_VL_CHAT_TEMPLATE}),
        ("preprocessor_config.json", PREPROCESSOR_CONFIG),
        ("generation_config.json", GENERATION_CONFIG),
    ):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(data, f, indent=2)
    return out_dir


# ------------------------------------------------------------------ released-format data
COLD_START_REPLY = (
    "<think>\nImage 1 follows the caption.\n</think>\n<answer>Image 1 is better</answer>"
)


def _generation_prompt(caption: str, kind: str = "image") -> str:
    """A pairwise generation prompt in the release's structure (dimensions, 1-10 scores, totals,
    the think/answer format), worded for these tests."""
    noun = kind.capitalize()
    return (
        f"You are given a caption and two {kind}s made from it. Judge both {kind}s on semantic "
        "consistency, aesthetics and authenticity, score each 1-10, add the scores, reason "
        "inside <think></think>, then write exactly one of "
        f"'{noun} 1 is better' or '{noun} 2 is better' inside <answer></answer>.\n"
        f"Text Caption: [{caption}]"
    )


def write_released_data(data_dir: str) -> dict[str, str]:
    """Small files in the released formats with their media under data_dir/images: a cold-start
    SFT set (a JSON array: LLaVA conversations and a LLaMA-Factory messages record with a system
    turn), GRPO prompts listed by the release's dataset YAML (images, a singular image, a video
    pair given as frames), a held-out set and pairs to score (native records, no verdict)."""
    from PIL import Image

    images = os.path.join(data_dir, "images")
    os.makedirs(images, exist_ok=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    for i, colour in enumerate(colours):
        Image.new("RGB", (56, 56 + 28 * (i % 2)), colour).save(os.path.join(images, f"{i}.png"))
    for f in range(8):  # two 4-frame videos, as the release gives video pairs to GRPO
        Image.new("RGB", (56, 56), (30 * f, 100, 200 - 20 * f)).save(
            os.path.join(images, f"v{f}.png")
        )

    def conversation(i: int, caption: str) -> dict:
        return {
            "conversations": [
                {"from": "human", "value": "<image><image>" + _generation_prompt(caption)},
                {"from": "gpt", "value": COLD_START_REPLY},
            ],
            "images": [f"images/{i}.png", f"images/{i + 1}.png"],
        }

    cold_start = [conversation(i, f"a {colours[i]} square") for i in range(3)]
    cold_start.append(
        {
            "messages": [
                {"role": "system", "content": "You are a careful judge of images."},
                {"role": "user", "content": "<image>\n<image>\n" + _generation_prompt("a cat")},
                {"role": "assistant", "content": COLD_START_REPLY},
            ],
            "images": ["images/4.png", "images/5.png"],
        }
    )

    def pair(caption: str, verdict: str, first: str, second: str, folder: str = "") -> dict:
        return {
            "problem": _generation_prompt(caption),
            "solution": verdict,
            "images": [folder + first, folder + second],
        }

    grpo = [
        pair("a red square", "Image 1 is better", "0.png", "1.png"),
        pair("a blue square", "Image 2 is better", "1.png", "2.png"),
        {
            "problem": "Question: what colour is the square?\nAnswer 1: Red.\nAnswer 2: Blue.\n"
            "Which answer is better? Reason inside <think></think>, then write 'Answer 1 is "
            "better' or 'Answer 2 is better' inside <answer></answer>.",
            "solution": "Answer 1 is better",
            "image": "0.png",
        },
        {
            "problem": _generation_prompt("a bird flying", kind="video"),
            "solution": "Video 2 is better",
            "images": [f"v{f}.png" for f in range(8)],
        },
    ]
    heldout = [
        pair("a green square", "Image 1 is better", "1.png", "2.png", "images/"),
        pair("a yellow square", "Image 2 is better", "2.png", "3.png", "images/"),
    ]
    pairs = [
        {
            "id": "pair-1",
            "task": "image_generation",
            "mode": "pairwise",
            "prompt": "a purple square",
            "images": ["images/6.png", "images/4.png"],
        },
        {
            "id": "pair-2",
            "task": "image_understanding",
            "mode": "pairwise",
            "prompt": "What colour is the square?",
            "images": ["images/7.png"],
            "answers": ["Black.", "White."],
        },
    ]
    paths = {}
    for name, rows in (("cold_start.json", cold_start), ("heldout.json", heldout)):
        paths[name] = os.path.join(data_dir, name)
        with open(paths[name], "w") as f:
            json.dump(rows, f, indent=1)
    with open(os.path.join(data_dir, "grpo_train_data.json"), "w") as f:
        json.dump(grpo, f, indent=1)
    paths["grpo.yaml"] = os.path.join(data_dir, "grpo.yaml")
    with open(paths["grpo.yaml"], "w") as f:
        f.write(
            "datasets:\n  - json_path: grpo_train_data.json\n    sampling_strategy: all\n"
            "    image_folder: images\n"
        )
    paths["pairs.jsonl"] = os.path.join(data_dir, "pairs.jsonl")
    with open(paths["pairs.jsonl"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in pairs)
    return paths

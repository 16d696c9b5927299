"""A stand-in for a clone of the release (CodeGoat24/UnifiedReward): scripts in the release's
layout and shape, worded for these tests, whose prompts ``urt-jax data templates-from-release``
reads."""

# ruff: noqa: E501  (the fixture scripts keep the release's long source lines)

import os

# messages list with the prompt as an inline f-string; a decoy string before it
IMAGE_GEN = r"""
from PIL import Image

SYSTEM = "Reply with <think> and <answer> tags."
prompt = ""  # the caption

messages = [
    {
        "role": "user",
        "content": [
            {"type": "image", "image": "a.png"},
            {"type": "image", "image": "b.png"},
            {
                "type": "text",
                "text": f"Rate two pictures of one caption; it costs $5 and keeps {{braces}}. Think in <think></think>, then <answer>: 'Image 1 is better' or 'Image 2 is better'.\n\nText Caption: [{prompt}]"
            },
        ],
    }
]
"""
IMAGE_GEN_TEXT = (
    "Rate two pictures of one caption; it costs $$5 and keeps {braces}. Think in <think></think>, "
    "then <answer>: 'Image 1 is better' or 'Image 2 is better'.\n\nText Caption: [${prompt}]"
)

# a parenthesised concatenation of literals ending with an f-string
IMAGE_UND = r"""
Query = ''  # Question
R1 = ''  # Response1
R2 = ''  # Response2

prompt_text = ("Judge two answers about a picture.\n" \
            "Think in <think></think>; put 'Answer 1 is better' or 'Answer 2 is better' in <answer></answer>.\n\n" \
            f"Question: [{Query}]\nAnswer 1: [{R1}]\nAnswer 2: [{R2}]")

messages = [{"role": "user", "content": [{"type": "image", "image": "x"}, {"type": "text", "text": prompt_text}]}]
"""
IMAGE_UND_TEXT = (
    "Judge two answers about a picture.\nThink in <think></think>; put 'Answer 1 is better' or "
    "'Answer 2 is better' in <answer></answer>.\n\n"
    "Question: [${prompt}]\nAnswer 1: [${answer1}]\nAnswer 2: [${answer2}]"
)

# no brackets, a trailing newline
VIDEO_UND = r"""
messages = [
    {
        "role": "user",
        "content": [
            {"type": "video", "video": video_path},
            {"type": "text", "text": "Judge two answers about a clip.\n" \
                "Think in <think></think>; then <answer>'Answer 1 is better' or 'Answer 2 is better'</answer>.\n\n" \
                f"Question: {Query}\nAnswer 1: {R1}\nAnswer 2: {R2}\n"}
        ]
    }
]
"""
VIDEO_UND_TEXT = (
    "Judge two answers about a clip.\nThink in <think></think>; then <answer>'Answer 1 is better' "
    "or 'Answer 2 is better'</answer>.\n\n"
    "Question: ${prompt}\nAnswer 1: ${answer1}\nAnswer 2: ${answer2}\n"
)

# only a benchmark script: the prompt inside a function
VIDEO_GEN_BENCH = r"""
def judge(video_path_1, video_path_2, prompt):
    messages = [{"role": "user", "content": [
        {"type": "video", "video": video_path_1},
        {"type": "video", "video": video_path_2},
        {"type": "text", "text": f"Rate two clips of one caption in <think></think>, then <answer>'Video 1 is better' or 'Video 2 is better'</answer>.\nText Caption: [{prompt}]"}]}]
    return messages
"""
VIDEO_GEN_TEXT = (
    "Rate two clips of one caption in <think></think>, then <answer>'Video 1 is better' or "
    "'Video 2 is better'</answer>.\nText Caption: [${prompt}]"
)

INF = "UnifiedReward-Think/inference_qwen/{0}/qwen_infer_cot_{0}.py"
BENCH = "UnifiedReward-Think/benchmark_evaluation/GenAI-Bench-Video/test_qwen25_cot_genAI_bench_video.py"


def _write(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


def write_release_clone(root) -> str:
    """The clone under ``root``: three inference scripts, video generation only in a benchmark
    script; returns its path."""
    return _write(
        root,
        {
            INF.format("image_generation"): IMAGE_GEN,
            INF.format("image_understanding"): IMAGE_UND,
            INF.format("video_understanding"): VIDEO_UND,
            BENCH: VIDEO_GEN_BENCH,
            "UnifiedReward-Think/README.md": "not a script",
        },
    )

"""The small BPE tokenizer of the embedded default, and the Qwen2.5-VL chat template.

The tokenizer is trained with ``tokenizers`` on the synthetic task's text (templates, captions,
questions, answers, teacher traces), byte-level like Qwen's, with Qwen2.5-VL's special tokens in
Qwen's order right after the 4000 regular tokens, and saved in Hugging Face format as package data
(urt_jax/assets/tokenizer), so an exported demo model carries a tokenizer transformers loads.
Rebuild it with ``python -m urt_jax.data.tokenizer``.
"""

from __future__ import annotations

import json
import os
import tempfile

from urt_jax.resources import DEMO_TOKENIZER_DIR as ASSET_DIR

NUM_REGULAR = 4000
# Qwen2.5-VL's special tokens, in the order of their ids (151643... in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2's pre-tokenisation split (contractions, words, single digits, punctuation, spaces).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
    r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2-VL chat template (a default system turn when the first message is not a system one;
# each image/video as <|vision_start|><|image_pad|><|vision_end|>), with {% generation %} markers
# around the assistant's content and <|im_end|> so transformers can return the assistant mask.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and message['content'] is string %}"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def synthetic_corpus(n_items: int = 1200, seed: int = 12345) -> list[str]:
    """Text of the synthetic task: every template, and captions/questions/answers/traces."""
    import yaml

    from urt_jax.data.synthetic import SyntheticConfig, make_item
    from urt_jax.resources import DEFAULT_TEMPLATES

    texts = []
    template_dir = os.path.dirname(DEFAULT_TEMPLATES)
    for name in sorted(os.listdir(template_dir)):
        with open(os.path.join(template_dir, name)) as f:
            texts += [t for modes in yaml.safe_load(f).values() for t in modes.values()]
    cfg = SyntheticConfig(image_size=28, num_frames=2, pointwise_fraction=0.2)
    with tempfile.TemporaryDirectory() as media:
        for i in range(n_items):
            task = cfg.tasks[i % len(cfg.tasks)]
            item = make_item(
                task, i, seed, cfg, media, pointwise=(i % 10 == 0 and "generation" in task)
            )
            texts += [item["prompt"], *item["answers"], item["reply"]]
    return texts


def build_tokenizer(out_dir: str = ASSET_DIR, corpus: list[str] | None = None) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = corpus if corpus is not None else synthetic_corpus()
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=NUM_REGULAR,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    filler = NUM_REGULAR - tok.get_vocab_size()
    if filler < 0:
        raise RuntimeError(f"BPE produced {tok.get_vocab_size()} > {NUM_REGULAR} tokens")
    # Reserved tokens pin the special ids at NUM_REGULAR.. whatever the corpus size.
    tok.add_tokens([f"<|reserved_{i}|>" for i in range(filler)])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == NUM_REGULAR + i, name
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    _normalise_config(out_dir)
    return out_dir


def _normalise_config(out_dir: str) -> None:
    """Drop fields that depend on the transformers version that wrote the file."""
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.pop("transformers_version", None)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def load_tokenizer(path: str = ASSET_DIR):
    """An HF fast tokenizer from local files only."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: tokenizer directory not found")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


if __name__ == "__main__":
    print(build_tokenizer())

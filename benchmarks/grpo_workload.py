"""What both sides of the GRPO measurement run on: the settings, the prompts (pairwise
image-generation judgements with two drawn images each, as UnifiedReward-Think's GRPO data has
them), the tokenizer saved with the checkpoint, and the rewards in TRL's calling convention.

Every piece is a pure function of the shape and a seed, so the urt_jax worker (records through
urt_jax's ExampleBuilder) and the TRL worker (dataset rows through transformers' processor) build
the same prompts in separate processes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.workload import Ids, Shape  # noqa: E402
from urt_jax import rewards  # noqa: E402
from urt_jax.data.records import PAIRWISE_VERDICTS, Media, PreferenceRecord  # noqa: E402
from urt_jax.data.synthetic import BACKGROUNDS, COLORS, SHAPES, Scene, draw_image  # noqa: E402
from urt_jax.data.templates import Templates  # noqa: E402
from urt_jax.resources import DEMO_TOKENIZER_DIR  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "configs", "templates", "unifiedreward_think.yaml")
# Pixel limits written to the checkpoint's preprocessor_config.json (Qwen2.5-VL's Hub values):
# both sides' image processors read them, and no benchmark image is resized by them.
MIN_PIXELS, MAX_PIXELS = 3136, 12845056


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """One generation batch (prompts x G completions) and one update on it, on both sides."""

    prompts: int = 4
    num_generations: int = 8
    # rows of one forward/backward pass; their gradients are summed into the one update (all 32
    # rows at once need more than this machine's 23 GB on urt_jax's side at the default shape)
    micro_batch_rows: int = 8
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 0.95
    beta: float = 0.04
    learning_rate: float = 1e-6
    max_steps: int = 1000  # the learning-rate schedule's length: no step of a run gets near it
    seed: int = 0

    @property
    def rows(self) -> int:
        return self.prompts * self.num_generations

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of one generation batch: every completion runs to full length."""
        return self.rows * self.max_new_tokens


def settings(shape: Shape) -> GRPOSettings:
    return GRPOSettings(num_generations=shape.samples, max_new_tokens=shape.new_tokens)


# ----------------------------------------------------------------------------- prompts
def _png(scene: Scene, size: int, seed: int) -> bytes:
    buf = io.BytesIO()
    draw_image(scene, size, seed).save(buf, format="PNG")
    return buf.getvalue()


def records(shape: Shape, count: int = 4, seed: int = 0) -> list[PreferenceRecord]:
    """``count`` pairwise image-generation items: a caption, the image drawn from it and one
    with its colour changed (in a seeded order), and the verdict naming the faithful one."""
    out = []
    for i in range(count):
        rng = random.Random(f"grpo:{seed}:{i}")
        scene = Scene(
            rng.choice(SHAPES), rng.choice(sorted(COLORS)), rng.choice((1, 2)),
            rng.choice(sorted(BACKGROUNDS)),
        )  # fmt: skip
        other = dataclasses.replace(
            scene, color=rng.choice([c for c in sorted(COLORS) if c != scene.color])
        )
        pair = [_png(scene, shape.image, 2 * i), _png(other, shape.image, 2 * i + 1)]
        first_wins = rng.random() < 0.5
        if not first_wins:
            pair.reverse()
        record = PreferenceRecord(
            id=f"grpo-bench-{i}",
            task="image_generation",
            mode="pairwise",
            verdict=PAIRWISE_VERDICTS["image_generation"][0 if first_wins else 1],
            media=tuple(Media("image", data=b) for b in pair),
            prompt=scene.caption(),
        )
        out.append(record.validate())
    return out


def trl_rows(shape: Shape, count: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """The same items as TRL dataset rows: the user text (the template rendered as urt_jax
    renders it), the two images (TRL puts them before the text, as urt_jax's chat does) and the
    verdict as the ``solution`` column the accuracy reward reads."""
    from PIL import Image

    templates = Templates.load(TEMPLATES)
    rows = []
    for r in records(shape, count, seed):
        images = [Image.open(io.BytesIO(m.data)).convert("RGB") for m in r.media]
        rows.append(
            {
                "prompt": [{"role": "user", "content": templates.render(r)}],
                "images": images,
                "solution": r.verdict,
            }
        )
    return rows


def prompt_digest(prompts: Sequence[Sequence[int]]) -> str:
    """An order-free fingerprint of the distinct prompts' token ids (pads excluded)."""
    import hashlib

    distinct = sorted({",".join(str(int(t)) for t in p) for p in prompts})
    return hashlib.sha256("\n".join(distinct).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- tokenizer
def save_tokenizer(shape: Shape, model_dir: str) -> dict[str, int]:
    """The demo tokenizer (urt_jax/assets/tokenizer) with its special tokens moved to the
    checkpoint's ids: reserved tokens fill the ids between its BPE vocabulary and Qwen's special
    tokens, which then start at ``Ids.of(shape).bos`` in Qwen's order (added-token ids in
    tokenizer.json are assigned in list order on load, so the filler is what places them).
    Written with its chat template and a preprocessor_config.json into ``model_dir``; returns
    the special ids as loaded back."""
    with open(os.path.join(DEMO_TOKENIZER_DIR, "tokenizer.json")) as f:
        spec = json.load(f)
    regular = len(spec["model"]["vocab"])
    base = Ids.of(shape).bos
    special = [t for t in spec["added_tokens"] if t["special"]]
    reserved = next(t for t in spec["added_tokens"] if not t["special"])
    filler = [
        {**reserved, "id": regular + i, "content": f"<|reserved_{i}|>"}
        for i in range(base - regular)
    ]
    spec["added_tokens"] = filler + [{**t, "id": base + i} for i, t in enumerate(special)]
    with open(os.path.join(model_dir, "tokenizer.json"), "w") as f:
        json.dump(spec, f, ensure_ascii=False)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(DEMO_TOKENIZER_DIR, name), model_dir)
    with open(os.path.join(model_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(), f, indent=2)
    return check_tokenizer(shape, model_dir)


def preprocessor_config() -> dict[str, Any]:
    from urt_jax.data.processor import ProcessorConfig

    p = ProcessorConfig()
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": p.patch_size,
        "temporal_patch_size": p.temporal_patch_size,
        "merge_size": p.merge_size,
        "image_mean": list(p.image_mean),
        "image_std": list(p.image_std),
    }


def check_tokenizer(shape: Shape, model_dir: str) -> dict[str, int]:
    """Loads the saved tokenizer, checks its special ids against the checkpoint's and that any
    id of the vocabulary decodes (completions of a random model are mostly reserved ids)."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = Ids.of(shape)
    got = {
        name: tok.convert_tokens_to_ids(token)
        for name, token in (
            ("bos", "<|endoftext|>"), ("eos", "<|im_end|>"), ("start", "<|vision_start|>"),
            ("end", "<|vision_end|>"), ("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
        )
    }  # fmt: skip
    want = dataclasses.asdict(ids)
    if got != want:
        raise RuntimeError(f"{model_dir}: tokenizer special ids {got} != checkpoint's {want}")
    rng = np.random.default_rng(0)
    tok.batch_decode(rng.integers(0, shape.vocab, (4, 64)).tolist(), skip_special_tokens=True)
    tok.decode(list(range(shape.vocab)), skip_special_tokens=True)
    return got


# ----------------------------------------------------------------------------- rewards
def _texts(completions: Sequence[Any]) -> list[str]:
    """TRL's completions: conversational ([{"role": "assistant", "content": text}]) or text."""
    return [c[0]["content"] if isinstance(c, list) else c for c in completions]


def format_reward(prompts: list, completions: list, **_: Any) -> list[float]:
    """urt_jax.rewards' format reward as a TRL reward function."""
    return rewards.format_rewards(_texts(completions)).tolist()


def accuracy_reward(prompts: list, completions: list, solution: list[str], **_: Any) -> list[float]:
    """urt_jax.rewards' accuracy reward; the verdicts come from the dataset's solution column."""
    return rewards.accuracy_rewards(_texts(completions), solution).tolist()


TRL_REWARDS: tuple[Callable[..., list[float]], ...] = (format_reward, accuracy_reward)

"""The embedded synthetic preference task: procedurally drawn images and videos, captions and
questions, pairwise (and pointwise) items for all four task kinds, and a programmatic teacher that
writes chain-of-thought traces in the released format. It stands in for the GPT-4o-distilled
cold-start data so the whole system runs and learns with nothing downloaded.

Scenes are shapes (circle, square, triangle) of a colour, a count of 1 or 2, on a background;
videos move the shapes in one direction. A generation pair holds one candidate drawn from the
caption and one with an attribute changed (colour, shape, count or direction); an understanding
pair holds a correct and a wrong answer to a question about the scene. Everything is deterministic
given the seed; train and held-out splits use disjoint seeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np
from PIL import Image, ImageDraw

from urt_jax.atomic import replace_with
from urt_jax.data.records import PAIRWISE_VERDICTS, TASKS

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}
COUNT_WORDS = {1: "a", 2: "two"}
NUMBER_WORDS = {1: "one", 2: "two"}


@dataclasses.dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    count: int
    background: str
    direction: str | None = None  # videos only

    def caption(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        text = f"{COUNT_WORDS[self.count]} {self.color} {noun} on a {self.background} background"
        if self.direction:
            text += f", moving {self.direction}"
        return text


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    image_size: int = 56  # pixels; a multiple of 28 gives an exact patch grid
    num_frames: int = 4
    fps: float = 2.0
    tasks: tuple[str, ...] = TASKS
    pointwise_fraction: float = 0.0
    trace: str = "full"  # "full": every dimension and the totals; "brief": one step per line

    def __post_init__(self):
        if self.trace not in ("full", "brief"):
            raise ValueError(f"synthetic trace must be 'full' or 'brief', found {self.trace!r}")


def _draw(
    scene: Scene,
    size: int,
    rng: random.Random,
    shift: tuple[float, float] = (0, 0),
    jitter: list[tuple[float, float]] | None = None,
) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    r = size * 0.18
    color = COLORS[scene.color]
    centers = jitter or [
        (rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size) for _ in range(scene.count)
    ]
    if scene.count == 2 and jitter is None:
        centers = [(size * 0.28, size * 0.5), (size * 0.72, size * 0.5)]
    for cx, cy in centers:
        cx, cy = cx + shift[0], cy + shift[1]
        box = (cx - r, cy - r, cx + r, cy + r)
        if scene.shape == "circle":
            draw.ellipse(box, fill=color)
        elif scene.shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


def draw_image(scene: Scene, size: int, seed: int) -> Image.Image:
    return _draw(scene, size, random.Random(seed))


def draw_video(scene: Scene, size: int, frames: int, seed: int) -> list[Image.Image]:
    rng = random.Random(seed)
    dx, dy = DIRECTIONS[scene.direction or "right"]
    step = size * 0.4 / max(frames - 1, 1)
    start = [(size * 0.5 - dx * size * 0.2, size * 0.5 - dy * size * 0.2)]
    if scene.count == 2:
        off = (0, size * 0.22) if dx else (size * 0.22, 0)
        start = [
            (start[0][0] - off[0], start[0][1] - off[1]),
            (start[0][0] + off[0], start[0][1] + off[1]),
        ]
    return [
        _draw(scene, size, rng, shift=(dx * step * i, dy * step * i), jitter=start)
        for i in range(frames)
    ]


def _random_scene(rng: random.Random, video: bool) -> Scene:
    return Scene(
        rng.choice(SHAPES),
        rng.choice(list(COLORS)),
        rng.choice((1, 2)),
        rng.choice(list(BACKGROUNDS)),
        rng.choice(list(DIRECTIONS)) if video else None,
    )


def _perturb(scene: Scene, rng: random.Random) -> tuple[Scene, str]:
    """The scene with one attribute changed, and which one."""
    options = ["color", "shape", "count"] + (["direction"] if scene.direction else [])
    attr = rng.choice(options)
    if attr == "color":
        new = rng.choice([c for c in COLORS if c != scene.color])
    elif attr == "shape":
        new = rng.choice([s for s in SHAPES if s != scene.shape])
    elif attr == "count":
        new = 3 - scene.count
    else:
        new = rng.choice([d for d in DIRECTIONS if d != scene.direction])
    return dataclasses.replace(scene, **{attr: new}), attr


def _describe(scene: Scene) -> str:
    noun = scene.shape if scene.count == 1 else f"{scene.shape}s"
    text = f"{COUNT_WORDS[scene.count]} {scene.color} {noun}"
    return text + (f" moving {scene.direction}" if scene.direction else "")


# ----------------------------------------------------------------------------- the teacher
def teacher_pairwise(
    task: str,
    first_scores: list[int],
    second_scores: list[int],
    dims: list[str],
    reasons: list[tuple[str, str]],
    observations: list[str] = (),
) -> str:
    """A CoT trace in the released format: what is seen first (perception before judgement),
    then per-dimension scores, totals, the verdict."""
    noun = {"image_generation": "Image", "video_generation": "Video"}.get(task, "Answer")
    lines = list(observations) + [
        f"{i + 1}. {dim}: {noun} 1 ({a}/10) - {ra}; {noun} 2 ({b}/10) - {rb}"
        for i, (dim, a, b, (ra, rb)) in enumerate(
            zip(dims, first_scores, second_scores, reasons, strict=True)
        )
    ]
    t1, t2 = sum(first_scores), sum(second_scores)
    lines += [
        "Total score:",
        f"{noun} 1: {'+'.join(map(str, first_scores))}={t1}",
        f"{noun} 2: {'+'.join(map(str, second_scores))}={t2}",
    ]
    return _think_answer(lines, PAIRWISE_VERDICTS[task][0 if t1 > t2 else 1])


def _think_answer(lines: list[str], verdict: str) -> str:
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n<answer>{verdict}</answer>"


def _value(scene: Scene, attr: str) -> str:
    value = getattr(scene, attr)
    return NUMBER_WORDS[value] if attr == "count" else value


def _compare(attr: str, reference: str, values: list[str]) -> str:
    """'color blue: blue agrees, green contradicts.': a reference value, then each candidate's
    value with its judgement right after it (two words a few tokens apart)."""
    judged = ", ".join(f"{v} {'agrees' if v == reference else 'contradicts'}" for v in values)
    return f"{attr} {reference}: {judged}."


def _brief_generation(noun: str, target: Scene, pair: list[Scene], verdict: str) -> str:
    """A brief trace: one line per attribute with the caption's value, then each candidate's
    value as seen and whether it agrees; then the candidate that contradicts the caption. Every
    judgement compares two words a few tokens apart, which a small model trained from scratch
    learns far sooner than comparing whole descriptions."""
    attrs = ["color", "shape", "count"] + (["direction"] if target.direction else [])
    lines = [_compare(a, _value(target, a), [_value(c, a) for c in pair]) for a in attrs]
    lines.append(f"{noun} {1 if pair[0] != target else 2} contradicts the caption.")
    return _think_answer(lines, verdict)


def teacher_pointwise(
    dims: list[str],
    scores: list[int],
    reasons: list[str],
    observations: list[str] = (),
    brief: bool = False,
) -> str:
    if brief:
        dims, scores, reasons = dims[:1], scores[:1], reasons[:1]
    lines = list(observations) + [
        f"{i + 1}. {d}: {r} ({s}/10)" if brief else f"{i + 1}. {d}: {s}/10 - {r}"
        for i, (d, s, r) in enumerate(zip(dims, scores, reasons, strict=True))
    ]
    avg = round(sum(scores) / len(scores))
    lines.append(f"Average: ({'+'.join(map(str, scores))})/{len(scores)} = {avg}")
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n<answer>Score: {avg}</answer>"


_GEN_DIMS = {
    "image_generation": ["Semantic consistency", "Aesthetics", "Authenticity"],
    "video_generation": ["Semantic consistency", "Temporal coherence", "Authenticity"],
}
_UND_DIMS = ["Semantic accuracy", "Correctness", "Clarity"]


def _quality(rng: random.Random) -> int:
    # Secondary dimensions vary by at most 1 so that the semantic gap (>= 4) decides the totals.
    return rng.choice((7, 8))


# ----------------------------------------------------------------------------- items
def make_item(
    task: str, index: int, seed: int, cfg: SyntheticConfig, media_dir: str, pointwise: bool = False
) -> dict:
    """One item in the native JSONL format (media written under media_dir)."""
    rng = random.Random(f"{seed}:{index}:{task}")
    video = task.startswith("video")
    scene = _random_scene(rng, video)
    item_id = f"{task}-{seed}-{index}"
    if task.endswith("generation"):
        noun = "Video" if video else "Image"
        wrong, attr = _perturb(scene, rng)
        good_first = rng.random() < 0.5
        pair = [scene, wrong] if good_first else [wrong, scene]
        candidates = pair[:1] if pointwise else pair
        paths = [
            _write_media(c, f"{item_id}-{k}", video, cfg, media_dir, rng.randrange(2**31))
            for k, c in enumerate(candidates)
        ]
        semantic = {True: rng.choice((8, 9, 10)), False: rng.choice((2, 3, 4))}
        if pointwise:
            match = candidates[0] == scene
            scores = [semantic[match], _quality(rng), _quality(rng)]
            reason = (
                "it shows "
                + _describe(candidates[0])
                + (", as the caption asks" if match else f", not {_describe(scene)}")
            )
            reply = teacher_pointwise(
                _GEN_DIMS[task],
                scores,
                [reason, "clean composition", "plausible detail"],
                [
                    _shows(f"The {noun.lower()}", candidates[0]),
                    f"The caption asks for {_describe(scene)}.",
                ],
                brief=cfg.trace == "brief",
            )
            verdict = reply.rsplit("<answer>", 1)[1].removesuffix("</answer>")
            mode = "pointwise"
        else:
            verdict = PAIRWISE_VERDICTS[task][0 if good_first else 1]
            if cfg.trace == "brief":
                reply = _brief_generation(noun, scene, pair, verdict)
            else:
                s = [[semantic[c == scene], _quality(rng), _quality(rng)] for c in pair]
                reasons = [
                    (_reason(pair[0], scene, attr), _reason(pair[1], scene, attr)),
                    ("balanced composition", "balanced composition"),
                    ("clean shapes", "clean shapes"),
                ]
                observations = [
                    " ".join(_shows(f"{noun} {k + 1}", c) for k, c in enumerate(pair)),
                    f"The caption asks for {_describe(scene)}.",
                ]
                reply = teacher_pairwise(task, s[0], s[1], _GEN_DIMS[task], reasons, observations)
            assert reply.endswith(f"<answer>{verdict}</answer>")
            mode = "pairwise"
        return {
            "id": item_id,
            "task": task,
            "mode": mode,
            "prompt": scene.caption(),
            _key(video): paths,
            "answers": [],
            "verdict": verdict,
            "reply": reply,
            **({"fps": cfg.fps} if video else {}),
        }
    # understanding: a question about one scene, a correct and a wrong answer
    path = _write_media(scene, f"{item_id}-0", video, cfg, media_dir, rng.randrange(2**31))
    kind, question, (right, right_key), (wrong, wrong_key) = _question(scene, rng)
    good_first = rng.random() < 0.5
    answers = [right, wrong] if good_first else [wrong, right]
    if cfg.trace == "brief":
        keys = [right_key, wrong_key] if good_first else [wrong_key, right_key]
        # the attribute asked about as seen, then each answer's word and whether it agrees
        lines = [
            _compare(kind, _value(scene, kind), keys),
            f"Answer {2 if good_first else 1} contradicts the {'video' if video else 'image'}.",
        ]
        verdict = PAIRWISE_VERDICTS[task][0 if good_first else 1]
        reply = _think_answer(lines, verdict)
    else:
        acc = {True: rng.choice((8, 9, 10)), False: rng.choice((1, 2, 3))}
        s = [[acc[a == right], acc[a == right], _quality(rng)] for a in answers]
        why = [
            "agrees with what is shown" if a == right else "contradicts what is shown"
            for a in answers
        ]
        reply = teacher_pairwise(
            task,
            s[0],
            s[1],
            _UND_DIMS,
            [(why[0], why[1]), (why[0], why[1]), ("clear", "clear")],
            [_shows("The video" if video else "The image", scene)],
        )
    return {
        "id": item_id,
        "task": task,
        "mode": "pairwise",
        "prompt": question,
        _key(video): [path],
        "answers": answers,
        "verdict": PAIRWISE_VERDICTS[task][0 if good_first else 1],
        "reply": reply,
        **({"fps": cfg.fps} if video else {}),
    }


def _key(video: bool) -> str:
    return "videos" if video else "images"


def _shows(subject: str, scene: Scene) -> str:
    """'Image 1 shows two red circles.': the perception step of the teacher's trace."""
    return f"{subject} shows {_describe(scene)}."


def _reason(candidate: Scene, target: Scene, attr: str) -> str:
    if candidate == target:
        return f"shows {_describe(candidate)}, as the caption asks"
    wanted = getattr(target, attr)
    got = getattr(candidate, attr)
    if attr == "count":
        wanted, got = COUNT_WORDS[wanted], COUNT_WORDS[got]
    return f"the {attr} is {got}, not {wanted}"


def _question(
    scene: Scene, rng: random.Random
) -> tuple[str, str, tuple[str, str], tuple[str, str]]:
    """The attribute asked about, the question, its right and a wrong answer, each with the word
    that decides it (what a brief trace compares with what is shown)."""
    kinds = ["color", "shape", "count"] + (["direction"] if scene.direction else [])
    kind = rng.choice(kinds)
    if kind == "color":
        wrong = rng.choice([c for c in COLORS if c != scene.color])
        return (
            kind,
            "What colour are the shapes?",
            (f"They are {scene.color}.", scene.color),
            (f"They are {wrong}.", wrong),
        )
    if kind == "shape":
        wrong = rng.choice([s for s in SHAPES if s != scene.shape])
        return (
            kind,
            "What shape is drawn?",
            (f"A {scene.shape}.", scene.shape),
            (f"A {wrong}.", wrong),
        )
    if kind == "count":
        return (
            kind,
            "How many shapes are there?",
            (f"{scene.count}.", NUMBER_WORDS[scene.count]),
            (f"{3 - scene.count}.", NUMBER_WORDS[3 - scene.count]),
        )
    wrong = rng.choice([d for d in DIRECTIONS if d != scene.direction])
    return (
        kind,
        "Which way do the shapes move?",
        (f"They move {scene.direction}.", scene.direction),
        (f"They move {wrong}.", wrong),
    )


def _write_media(
    scene: Scene, name: str, video: bool, cfg: SyntheticConfig, media_dir: str, seed: int
) -> str | list[str]:
    if not video:
        rel = f"{name}.png"
        draw_image(scene, cfg.image_size, seed).save(os.path.join(media_dir, rel))
        return rel
    rels = []
    for i, frame in enumerate(draw_video(scene, cfg.image_size, cfg.num_frames, seed)):
        rel = f"{name}-f{i}.png"
        frame.save(os.path.join(media_dir, rel))
        rels.append(rel)
    return rels


def write_split(
    out_dir: str, split: str, n: int, seed: int, cfg: SyntheticConfig = SyntheticConfig()
) -> str:
    """Writes ``{out_dir}/{split}.jsonl`` (native format; media paths relative to out_dir)."""
    media_rel = os.path.join("media", split)
    os.makedirs(os.path.join(out_dir, media_rel), exist_ok=True)
    rng = np.random.default_rng(seed)
    path = os.path.join(out_dir, f"{split}.jsonl")

    def write(f) -> None:
        for i in range(n):
            task = cfg.tasks[i % len(cfg.tasks)]
            pointwise = task.endswith("generation") and rng.random() < cfg.pointwise_fraction
            item = make_item(task, i, seed, cfg, os.path.join(out_dir, media_rel), pointwise)
            for key in ("images", "videos"):
                if key in item:
                    item[key] = [_prefix(media_rel, p) for p in item[key]]
            f.write(json.dumps(item) + "\n")

    replace_with(path, write)
    return path


def _prefix(rel: str, p: str | list[str]) -> str | list[str]:
    return [os.path.join(rel, q) for q in p] if isinstance(p, list) else os.path.join(rel, p)


def write_synthetic(
    out_dir: str,
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    cfg: SyntheticConfig = SyntheticConfig(),
) -> dict[str, str]:
    """Train and held-out splits with disjoint seeds."""
    return {
        "train": write_split(out_dir, "train", n_train, 2 * seed, cfg),
        "heldout": write_split(out_dir, "heldout", n_heldout, 2 * seed + 1, cfg),
    }

"""Rewards for GRPO: the released format and accuracy rewards, and a registry for more.

Released semantics (UnifiedReward-Think's GRPO trainers):
- format: 1.0 iff the completion matches ``<think>.*?</think>\\s*<answer>.*?</answer>`` from its
  start (DOTALL; trailing text allowed), else 0.0;
- accuracy: the text inside the first ``<answer>...</answer>`` (DOTALL), stripped, or the whole
  completion stripped when there is no such tag, compared for exact equality with the solution
  string (not stripped): 1.0 or 0.0.
A config lists rewards by registry name with weights; the total is the weighted sum.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
SCORE_PATTERN = re.compile(r"[-+]?\d+(?:\.\d+)?")


def extract_answer(text: str) -> str:
    match = ANSWER_PATTERN.search(text)
    return match.group(1).strip() if match else text.strip()


def format_reward(text: str) -> float:
    return 1.0 if FORMAT_PATTERN.match(text) else 0.0


def accuracy_reward(text: str, solution: str) -> float:
    if not text:
        return 0.0
    return 1.0 if extract_answer(text) == solution else 0.0


def score_from_answer(text: str) -> float | None:
    """The first number inside the answer (pointwise: '<answer>Score: 7</answer>' -> 7.0)."""
    match = SCORE_PATTERN.search(extract_answer(text))
    return float(match.group(0)) if match else None


def score_distance_reward(text: str, solution: str, scale: float = 9.0) -> float:
    """Pointwise: 1 - |predicted - true| / scale, clipped to [0, 1]; 0 when no score is found."""
    pred, true = score_from_answer(text), score_from_answer(solution)
    if pred is None or true is None:
        return 0.0
    return float(min(1.0, max(0.0, 1.0 - abs(pred - true) / scale)))


# --------------------------------------------------------------------------------- batched
# A batched reward takes the completions and the per-completion solutions (and any extra per-item
# fields by keyword) and returns one float per completion.
BatchedReward = Callable[..., np.ndarray]
REWARDS: dict[str, BatchedReward] = {}


def register_reward(name: str) -> Callable[[BatchedReward], BatchedReward]:
    def wrap(fn: BatchedReward) -> BatchedReward:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return wrap


@register_reward("format")
def format_rewards(
    completions: Sequence[str], solutions: Sequence[str] | None = None, **_: Any
) -> np.ndarray:
    return np.array([format_reward(c) for c in completions], np.float32)


@register_reward("accuracy")
def accuracy_rewards(completions: Sequence[str], solutions: Sequence[str], **_: Any) -> np.ndarray:
    if len(completions) != len(solutions):
        raise ValueError(f"{len(completions)} completions but {len(solutions)} solutions")
    return np.array(
        [accuracy_reward(c, s) for c, s in zip(completions, solutions, strict=True)], np.float32
    )


@register_reward("score_distance")
def score_distance_rewards(
    completions: Sequence[str], solutions: Sequence[str], **_: Any
) -> np.ndarray:
    return np.array(
        [score_distance_reward(c, s) for c, s in zip(completions, solutions, strict=True)],
        np.float32,
    )


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0


def parse_reward_specs(items: Sequence[str | Mapping[str, Any]]) -> list[RewardSpec]:
    """From a config list: ``["format", {"name": "accuracy", "weight": 2.0}]``."""
    specs = []
    for i, item in enumerate(items):
        spec = RewardSpec(item) if isinstance(item, str) else RewardSpec(**item)
        if spec.name not in REWARDS:
            raise ValueError(
                f"rewards[{i}]: unknown reward {spec.name!r}; registered: {sorted(REWARDS)}"
            )
        specs.append(spec)
    return specs


def compute_rewards(
    specs: Sequence[RewardSpec], completions: Sequence[str], solutions: Sequence[str], **extra: Any
) -> tuple[np.ndarray, dict]:
    """(weighted total [N], {name: unweighted rewards [N]})."""
    parts = {s.name: REWARDS[s.name](completions, solutions, **extra) for s in specs}
    total = np.zeros(len(completions), np.float32)
    for s in specs:
        total += np.float32(s.weight) * parts[s.name]
    return total, parts

"""The rewards on tricky completions give the values of the released reward functions."""

import numpy as np
import pytest

from urt_jax.config import GRPOSection
from urt_jax.rewards import (
    RewardSpec,
    accuracy_reward,
    compute_rewards,
    format_reward,
    parse_reward_specs,
    score_distance_reward,
)

GT = "Image 1 is better"

# (completion, format reward, accuracy reward against GT), derived by hand from the released
# definitions: format = re.match(r"<think>.*?</think>\s*<answer>.*?</answer>", DOTALL);
# accuracy = strip(first <answer>..</answer> or whole text) == GT.
TABLE = [
    ("<think>a</think><answer>Image 1 is better</answer>", 1.0, 1.0),
    ("<think>\nmulti\nline\n</think>\n\n<answer>\n Image 1 is better \n</answer>", 1.0, 1.0),
    ("<think>a</think> <answer>Image 2 is better</answer>", 1.0, 0.0),
    # trailing text after the answer is allowed by re.match
    ("<think>a</think><answer>Image 1 is better</answer> thanks!", 1.0, 1.0),
    # leading whitespace: re.match anchors at the start, so the format fails; accuracy still reads
    (" <think>a</think><answer>Image 1 is better</answer>", 0.0, 1.0),
    # no think block
    ("<answer>Image 1 is better</answer>", 0.0, 1.0),
    # tags in the wrong order
    ("<answer>Image 1 is better</answer><think>a</think>", 0.0, 1.0),
    # missing answer tag: the whole completion is compared
    ("Image 1 is better", 0.0, 1.0),
    ("  Image 1 is better\n", 0.0, 1.0),
    ("<think>a</think>Image 1 is better", 0.0, 0.0),
    # several answer tags: the first one counts
    (
        "<think>a</think><answer>Image 2 is better</answer><answer>Image 1 is better</answer>",
        1.0,
        0.0,
    ),
    (
        "<think>a</think><answer>Image 1 is better</answer><answer>Image 2 is better</answer>",
        1.0,
        1.0,
    ),
    # case and punctuation matter
    ("<think>a</think><answer>image 1 is better</answer>", 1.0, 0.0),
    ("<think>a</think><answer>Image 1 is better.</answer>", 1.0, 0.0),
    ("<THINK>a</THINK><ANSWER>Image 1 is better</ANSWER>", 0.0, 0.0),
    # unclosed tags
    ("<think>a</think><answer>Image 1 is better", 0.0, 0.0),
    ("<think>a<answer>Image 1 is better</answer>", 0.0, 1.0),
    # empty completion
    ("", 0.0, 0.0),
    # empty think and answer still match the format regex
    ("<think></think><answer></answer>", 1.0, 0.0),
]


@pytest.mark.parametrize("text,fmt,acc", TABLE)
def test_released_semantics(text, fmt, acc):
    assert format_reward(text) == fmt
    assert accuracy_reward(text, GT) == acc


def test_solution_is_not_stripped():
    # the released trainer compares against the raw solution string
    assert accuracy_reward("<answer>Image 1 is better</answer>", " Image 1 is better") == 0.0


def test_batched_and_weighted_total():
    texts = [t for t, _, _ in TABLE]
    released = parse_reward_specs(GRPOSection().rewards)  # the default is the released pair
    assert released == [RewardSpec("format", 1.0), RewardSpec("accuracy", 1.0)]
    total, parts = compute_rewards(released, texts, [GT] * len(texts))
    np.testing.assert_array_equal(parts["format"], [f for _, f, _ in TABLE])
    np.testing.assert_array_equal(parts["accuracy"], [a for _, _, a in TABLE])
    np.testing.assert_array_equal(total, parts["format"] + parts["accuracy"])
    specs = parse_reward_specs(["format", {"name": "accuracy", "weight": 2.0}])
    total2, _ = compute_rewards(specs, texts, [GT] * len(texts))
    np.testing.assert_array_equal(total2, parts["format"] + 2 * parts["accuracy"])
    with pytest.raises(ValueError, match=r"unknown reward 'acuracy'"):
        parse_reward_specs(["acuracy"])


def test_score_distance_for_pointwise():
    assert score_distance_reward("<think>x</think><answer>Score: 7</answer>", "Score: 7") == 1.0
    assert score_distance_reward("<answer>Score: 4</answer>", "Score: 7") == pytest.approx(2 / 3)
    assert score_distance_reward("<answer>no idea</answer>", "Score: 7") == 0.0
    assert score_distance_reward("<answer>Score: 100</answer>", "Score: 1") == 0.0

"""The benchmark's decode profile (benchmarks/decode_profile.py) on a tiny model's sampler: the
compiled program's instructions grouped by what they compute, and a traced call added up."""

from collections import Counter

import pytest

from benchmarks.decode_profile import (
    ATTENTION,
    CHOOSE,
    LM_HEAD,
    ONCE,
    OTHER,
    WEIGHTS,
    instruction_groups,
    profile_sampling,
    share_overlaps,
)
from tests import hf_reference as ref
from urt_jax.generate.sampler import lower_sample

OPTIONS = dict(num_samples=2, max_new_tokens=4, eos_token_ids=[])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = ref.make_model(ref.tiny_config(), seed=0)
    _, ours = ref.save_and_load_ours(hf, tmp_path_factory.mktemp("profile"))
    batch = ref.build_batch([[("text", 3), ("image", (8, 12)), ("text", 4)]], seed=1)
    return ours, batch


def test_overlapping_thunks_share_their_time():
    got = share_overlaps([(0.0, 2.0, "a"), (1.0, 3.0, "b"), (5.0, 6.0, "a"), (5.5, 6.0, "c")])
    assert got == pytest.approx({"a": 1 + 0.5 + 0.5 + 0.25, "b": 0.5 + 1, "c": 0.25})
    assert sum(got.values()) == pytest.approx(4.0)  # the union of the intervals


def test_sampler_instructions_are_grouped_by_what_they_compute(tiny):
    model, batch = tiny
    text = lower_sample(model, batch, **OPTIONS).compile().as_text()
    module, groups = instruction_groups(text, model.config.text.vocab_size)
    assert module == "jit__sample_jit"
    counts = Counter(groups.values())
    # the decode step scans the stacked layers: one layer's instructions, run once per layer.
    # Scores and weighted values over the prompt's keys and over the generated ones
    assert counts[ATTENTION] == 4
    assert counts[LM_HEAD] == 1
    assert counts[WEIGHTS] >= 4  # q|k|v, o, gate|up and down at the least
    assert counts[CHOOSE] > 0 and counts[OTHER] > 0 and counts[ONCE] > 0
    # the prompt's LM head and the prefill's matmuls run once, outside the loop
    prefill_dots = [n for n, g in groups.items() if g == ONCE and "dot" in n]
    assert prefill_dots


def test_profile_of_a_sampling_call_adds_up(tiny):
    model, batch = tiny
    p = profile_sampling(model, batch, **OPTIONS)
    # decode steps: one per new token but the first, which the prefill's logits give
    assert p["steps"] == OPTIONS["max_new_tokens"] - 1
    for group in (WEIGHTS, LM_HEAD, ATTENTION, CHOOSE):
        assert p["loop_s"][group] > 0, group
    assert p["busy_s"] == pytest.approx(p["once_s"] + sum(p["loop_s"].values()))
    assert 0 < p["busy_s"] <= p["call_s"]
    assert p["step_ms"][WEIGHTS] == pytest.approx(1e3 * p["loop_s"][WEIGHTS] / p["steps"])

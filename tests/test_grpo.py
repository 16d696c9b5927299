"""The GRPO step on a tiny model: rollouts line up with teacher forcing, an update moves
log-probabilities the way the advantages say, the KL term pulls toward the reference, and a
sharded mesh gives the same update."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urt_jax.config import GRPOSection, TrainSection
from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.pipeline import load_records
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import load_tokenizer
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.inputs import VISION_FIELDS
from urt_jax.model.kernels import CPU_WORKAROUND
from urt_jax.sharding.init import abstract_model, init_model
from urt_jax.sharding.mesh import MeshConfig, make_mesh
from urt_jax.train.grpo import GRPOTrainer
from urt_jax.train.grpo_loss import group_advantages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = TrainSection(weight_decay=0.0, max_grad_norm=1e9, progress=False)
G = 4


def _grpo(**kw) -> GRPOSection:
    base = dict(
        max_steps=4,
        prompts_per_step=2,
        num_generations=G,
        max_new_tokens=6,
        temperature=1.0,
        top_p=1.0,
        learning_rate=1e-3,
        beta=0.0,
    )
    return GRPOSection(**{**base, **kw})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    paths = write_synthetic(
        str(out), 4, 1, seed=3, cfg=SyntheticConfig(image_size=56, num_frames=4)
    )
    records = load_records(paths["train"], str(out))[:2]  # an image pair and a video pair
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    tokenizer = load_tokenizer()
    builder = ExampleBuilder(
        tokenizer,
        Templates.load(os.path.join(ROOT, "configs", "templates", "short.yaml")),
        config,
        ProcessorConfig(max_pixels=3136, max_frames=4),
        include_reply=False,
    )
    trainer = GRPOTrainer(
        init_model(config, seed=0), make_mesh(MeshConfig(1, 1, 1)), TRAIN, _grpo()
    )
    rollouts = trainer.rollout(tokenizer, records, builder, seed=0)
    return config, rollouts


def _with_rewards(rollouts, rewards):
    rewards = np.asarray(rewards, np.float32)
    adv = np.asarray(group_advantages(jnp.asarray(rewards), G))
    return dataclasses.replace(rollouts, rewards=rewards, advantages=adv)


def _seq_logp(trainer, rollouts, params):
    inputs = jax.tree.map(jnp.asarray, rollouts.inputs)
    logp = trainer._logprobs(params, trainer.frozen, inputs, prompt_length=rollouts.prompt_length)
    return (np.asarray(logp) * rollouts.completion_mask).sum(-1)


def test_rollouts_line_up_with_teacher_forcing(setup):
    config, rollouts = setup
    assert rollouts.inputs.input_ids.shape[0] == 2 * G
    assert rollouts.inputs.pixel_values is not None  # an image pair and a video
    trainer = GRPOTrainer(
        init_model(config, seed=0), make_mesh(MeshConfig(1, 1, 1)), TRAIN, _grpo()
    )
    inputs = jax.tree.map(jnp.asarray, rollouts.inputs)
    logp = np.asarray(
        trainer._logprobs(
            trainer.state["params"], trainer.frozen, inputs, prompt_length=rollouts.prompt_length
        )
    )
    mask = rollouts.completion_mask.astype(bool)
    np.testing.assert_allclose(logp[mask], rollouts.sample_logprobs[mask], atol=1e-4)
    assert np.isfinite(rollouts.rewards).all() and rollouts.rewards.shape == (2 * G,)


def test_update_follows_the_advantages(setup):
    config, rollouts = setup
    rollouts = _with_rewards(rollouts, [2, 0, 1, 0, 0, 2, 2, 1])
    trainer = GRPOTrainer(
        init_model(config, seed=0), make_mesh(MeshConfig(1, 1, 1)), TRAIN, _grpo()
    )
    before = _seq_logp(trainer, rollouts, trainer.state["params"])
    metrics = trainer.step(rollouts)
    after = _seq_logp(trainer, rollouts, trainer.state["params"])
    moved = after - before
    adv = rollouts.advantages
    assert (moved[adv > 0] > 0).all(), (moved, adv)
    assert (moved[adv < 0] < 0).all(), (moved, adv)
    assert metrics["kl"] == 0.0 and metrics["clip_fraction"] == 0.0
    assert metrics["reward"] == pytest.approx(1.0)


def test_kl_term_pulls_toward_the_reference(setup):
    config, rollouts = setup
    rollouts = _with_rewards(rollouts, [1.0] * (2 * G))  # zero advantages: only the KL acts
    assert np.abs(rollouts.advantages).max() == 0.0
    trainer = GRPOTrainer(
        init_model(config, seed=0), make_mesh(MeshConfig(1, 1, 1)), TRAIN, _grpo(beta=0.5)
    )
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    trainer.state["params"] = jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape, p.dtype),
        trainer.state["params"],
    )

    inputs = jax.tree.map(jnp.asarray, rollouts.inputs)
    real = rollouts.completion_mask.astype(bool)

    def token_logp(params):
        p = rollouts.prompt_length
        return np.asarray(trainer._logprobs(params, trainer.frozen, inputs, prompt_length=p))[real]

    ref = token_logp(trainer.ref_params)
    gap_before = np.abs(token_logp(trainer.state["params"]) - ref).mean()
    # the whole schedule (max_steps updates, the rate decaying to 0): Adam's first sign-like
    # steps may move away before the pull shows, so compare the ends, per token (a sequence's
    # summed log-prob lets opposite token errors cancel)
    kls = [trainer.step(rollouts)["kl"] for _ in range(trainer.g.max_steps)]
    gap_after = np.abs(token_logp(trainer.state["params"]) - ref).mean()
    assert kls[0] > 0 and kls[-1] < 0.5 * kls[0]
    assert gap_after < 0.75 * gap_before


def test_sharded_update_matches(setup):
    config, rollouts = setup
    rollouts = _with_rewards(rollouts, [2, 0, 1, 0, 0, 2, 2, 1])
    results = []
    for shape in ((1, 1, 1), (2, 2, 2)):
        mesh = make_mesh(MeshConfig(*shape))
        trainer = GRPOTrainer(init_model(config, seed=0, mesh=mesh), mesh, TRAIN, _grpo(beta=0.04))
        metrics = trainer.step(rollouts)
        results.append((metrics["loss"], _seq_logp(trainer, rollouts, trainer.state["params"])))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-4)


def test_trainer_on_an_abstract_model_lowers_the_program_it_trains_with(setup):
    # benchmarks/plan_7b.py compiles GRPO's update from an abstract model (nothing allocated,
    # no reference copy made): the same program as a trainer on real weights
    config, rollouts = setup
    mesh = make_mesh(MeshConfig(2, 2, 2))
    planned = GRPOTrainer(abstract_model(config, mesh), mesh, TRAIN, _grpo(beta=0.04))
    real = GRPOTrainer(init_model(config, seed=0, mesh=mesh), mesh, TRAIN, _grpo(beta=0.04))
    leaves = jax.tree.leaves((planned.state, planned.frozen, planned.ref_params))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    (micro,) = real.micro_batches(rollouts)
    p = rollouts.prompt_length

    def program(t):
        return t._update.lower(t.state, t.frozen, micro, None, micro.mask, prompt_length=p)

    assert program(planned).as_text() == program(real).as_text()


def test_micro_batches_give_the_same_update(setup):
    """Two updates (mu = 2, so old log-probs too) with the KL term, over micro-batches of 4 rows
    on a 2-device mesh, land where one pass over all 8 rows does."""
    config, rollouts = setup
    rollouts = _with_rewards(rollouts, [2, 0, 1, 0, 0, 2, 2, 1])
    results = []
    for micro, shape in ((None, (1, 1, 1)), (4, (1, 2, 1))):
        mesh = make_mesh(MeshConfig(*shape))
        g = _grpo(beta=0.04, num_iterations=2, micro_batch_rows=micro)
        trainer = GRPOTrainer(init_model(config, seed=0, mesh=mesh), mesh, TRAIN, g)
        assert len(trainer.micro_batches(rollouts)) == (1 if micro is None else 2)
        metrics = trainer.step(rollouts)
        results.append((metrics, _seq_logp(trainer, rollouts, trainer.state["params"])))
    (single, single_logp), (split, split_logp) = results
    for key in ("loss", "grad_norm", "kl", "clip_fraction"):
        assert split[key] == pytest.approx(single[key], rel=1e-4, abs=1e-7), key
    assert single["kl"] > 0  # the second update moved away from the reference
    np.testing.assert_allclose(split_logp, single_logp, rtol=1e-4, atol=1e-4)


def _media_per_row(inputs):
    """The inputs as before media were shared: every row with its own copy of its media."""
    index = np.asarray(inputs.media_row)
    copies = {n: np.asarray(getattr(inputs, n))[index] for n in VISION_FIELDS}
    return dataclasses.replace(inputs, **copies, media_row=None)


@pytest.mark.parametrize("micro,shape", [(None, (1, 1, 1)), (2, (1, 2, 1))])
def test_media_encoded_once_per_prompt_give_the_same_loss_and_gradients(setup, micro, shape):
    """The update's inputs hold each prompt's media once (the vision tower encodes them once,
    not G times); its loss and gradients, the vision tower's included (trained here), equal
    those of inputs holding a copy of the media in every row. Micro-batches of 2 rows are half
    a prompt's group: each holds its prompt's media, repeated to split over the 2 devices."""
    config, rollouts = setup
    rollouts = _with_rewards(rollouts, [2, 0, 1, 0, 0, 2, 2, 1])
    assert rollouts.inputs.pixel_values.shape[0] == 2  # two prompts, eight rows
    per_row = dataclasses.replace(rollouts, inputs=_media_per_row(rollouts.inputs))
    mesh = make_mesh(MeshConfig(*shape))
    train = dataclasses.replace(TRAIN, freeze_vision=False)
    g = _grpo(beta=0.04, micro_batch_rows=micro)
    trainer = GRPOTrainer(init_model(config, seed=0, mesh=mesh), mesh, train, g)
    params, p = trainer.state["params"], rollouts.prompt_length
    shared, copied = trainer.micro_batches(rollouts), trainer.micro_batches(per_row)
    for once, each in zip(shared, copied, strict=True):
        rows = once.inputs.input_ids.shape[0]
        assert once.inputs.pixel_values.shape[0] == (1 if micro else 2) * shape[1]
        assert each.inputs.pixel_values.shape[0] == rows
        ref = trainer._logprobs(trainer.ref_params, trainer.frozen, once.inputs, prompt_length=p)
        (loss, _), grads = trainer.value_and_grad(
            params, trainer.frozen, once, None, ref, prompt_length=p
        )
        (want_loss, _), want = trainer.value_and_grad(
            params, trainer.frozen, each, None, ref, prompt_length=p
        )
        assert float(loss) == pytest.approx(float(want_loss), abs=1e-5)
        flat_got = jax.tree_util.tree_leaves_with_path(grads)
        flat_want = jax.tree.leaves(want)
        assert len(flat_got) == len(flat_want)
        assert max(float(np.abs(x).max()) for x in flat_want) > 1e-2  # 1e-5 is a real bound
        vision = 0
        for (path, got), expected in zip(flat_got, flat_want, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-5)
            vision += "visual" in jax.tree_util.keystr(path) and np.abs(expected).max() > 0
        assert vision  # gradients reach the vision tower through the shared features


@pytest.mark.parametrize(
    "micro,shape,message",
    [(3, (1, 1, 1), "does not divide the 8 rows"), (2, (1, 4, 1), "do not divide over")],
)
def test_micro_batch_rows_are_checked(setup, micro, shape, message):
    config, rollouts = setup
    mesh = make_mesh(MeshConfig(*shape))
    trainer = GRPOTrainer(abstract_model(config, mesh), mesh, TRAIN, _grpo(micro_batch_rows=micro))
    with pytest.raises(ValueError, match=message):
        trainer.micro_batches(rollouts)


@pytest.mark.parametrize("kernels", ["cpu", "tpu", "gpu"])
def test_grpo_update_holds_cpu_workarounds_only_when_built_for_the_cpu(setup, kernels):
    config, rollouts = setup
    model = init_model(config, seed=0, kernels=kernels)
    trainer = GRPOTrainer(model, make_mesh(MeshConfig(1, 1, 1)), TRAIN, _grpo())
    (micro,) = trainer.micro_batches(rollouts)
    p = rollouts.prompt_length
    lowered = trainer._update.lower(
        trainer.state, trainer.frozen, micro, None, None, prompt_length=p
    )
    assert (CPU_WORKAROUND in lowered.as_text(debug_info=True)) == (kernels == "cpu")

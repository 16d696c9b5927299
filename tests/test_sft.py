"""SFT on 8 fake CPU devices: mesh invariance, loss masking, non-finite steps."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from urt_jax.config import TrainSection
from urt_jax.data.batching import Buckets, batch_sizes, pad_batch
from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.pipeline import PipelineOptions, load_records, make_dataset
from urt_jax.data.processor import ProcessorConfig
from urt_jax.data.synthetic import SyntheticConfig, write_synthetic
from urt_jax.data.templates import Templates
from urt_jax.data.tokenizer import load_tokenizer
from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.kernels import CPU_WORKAROUND
from urt_jax.sharding.init import abstract_model, init_model
from urt_jax.sharding.mesh import MeshConfig, make_mesh
from urt_jax.sharding.rules import logical_to_spec
from urt_jax.train.core import NonFiniteLossError
from urt_jax.train.loss import target_nll
from urt_jax.train.optim import decay_mask
from urt_jax.train.sft import SFTTrainer, shard_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = TrainSection(
    max_steps=3,
    learning_rate=1e-3,
    warmup_ratio=0.0,
    max_grad_norm=1.0,
    weight_decay=0.01,
    progress=False,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    paths = write_synthetic(
        str(out), n_train=16, n_heldout=4, seed=11, cfg=SyntheticConfig(image_size=56, num_frames=4)
    )
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    short = os.path.join(ROOT, "configs", "templates", "short.yaml")
    builder = ExampleBuilder(
        load_tokenizer(),
        Templates.load(short),
        config,
        ProcessorConfig(max_pixels=56 * 56, max_frames=4),
    )
    records = load_records(paths["train"], str(out))
    opts = PipelineOptions(
        batch_size=8,
        seed=0,
        process_index=0,
        process_count=1,
        buckets=Buckets(
            lengths=(320,), min_patches=64, min_windows=8, min_frames=8, min_frame_len=16
        ),
    )
    batches = list(make_dataset(records, builder, config, opts))[:2]
    # one fixed shape for every batch, so each mesh compiles once
    sizes = np.max([batch_sizes(b) for b in batches], axis=0)
    batches = [pad_batch(b, sizes, config) for b in batches]
    return config, batches


def _train(config, batches, mesh_shape, steps=3, train=TRAIN, accum=1, remat="none", kernels="cpu"):
    mesh = make_mesh(MeshConfig(*mesh_shape))
    model = init_model(config, seed=0, mesh=mesh, remat=remat, kernels=kernels)
    trainer = SFTTrainer(model, mesh, train, steps)
    losses = []
    for i in range(steps):
        micro = [batches[(i * accum + k) % len(batches)] for k in range(accum)]
        losses.append(trainer.step(micro)["loss"])
    return trainer, losses


def test_same_losses_on_every_mesh(setup):
    config, batches = setup
    reference, ref_losses = _train(config, batches, (1, 1, 1))
    assert ref_losses[2] < ref_losses[0]  # it trains
    ref_params = dict(nnx.to_flat_state(reference.state["params"]))
    for shape in ((2, 2, 2), (1, 4, 2), (8, 1, 1)):
        trainer, losses = _train(config, batches, shape)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(shape))
        moments = trainer.state["opt_state"][1][0]  # chain(clip, adamw): adam's (mu, nu)
        for path, var in nnx.to_flat_state(trainer.state["params"]):
            value = var.get_value()
            want = logical_to_spec(var.get_metadata()["logical_axes"], value.shape, trainer.mesh)
            assert value.sharding.spec == want, (shape, path)
            for moment in (moments.mu, moments.nu):  # Adam state is sharded like its parameter
                got = dict(nnx.to_flat_state(moment))[path].get_value().sharding.spec
                assert got == want, (shape, path)
            np.testing.assert_allclose(
                np.asarray(value),
                np.asarray(ref_params[path].get_value()),
                # Adam turns float noise in near-zero gradients
                # into updates of up to ~lr; 10% of one step:
                rtol=0,
                atol=1e-4,
                err_msg=str((shape, path)),
            )


def test_remat_with_frozen_vision_trains_the_same(setup):
    # the pod configs rematerialise every block while the vision tower stays frozen
    config, batches = setup
    _, plain = _train(config, batches, (1, 2, 1), steps=2)
    _, remat = _train(config, batches, (1, 2, 1), steps=2, remat="full")
    np.testing.assert_allclose(remat, plain, rtol=1e-5)


def test_pod_program_trains_the_same(setup):
    # built for TPU, as on a pod: splash attention (interpreted here) in shard_map, the decoder
    # layers a rolled scan whose residual stream is held split over the batch
    # (rules.constrain), no XLA:CPU workarounds
    config, batches = setup
    _, cpu = _train(config, batches, (2, 2, 2), steps=2, remat="full")
    _, pod = _train(config, batches, (2, 2, 2), steps=2, remat="full", kernels="tpu")
    np.testing.assert_allclose(pod, cpu, rtol=1e-5)


def test_accumulation_equals_one_big_batch(setup):
    config, batches = setup
    halves = []
    for b in batches[:1]:
        for sl in (slice(0, 4), slice(4, 8)):
            x = b.inputs
            inputs = dataclasses.replace(
                x,
                input_ids=x.input_ids[sl],
                attention_mask=x.attention_mask[sl],
                position_ids=x.position_ids[:, sl],
                vision_token_index=x.vision_token_index[sl],
                pixel_values=x.pixel_values[sl],
                rot_pos=x.rot_pos[sl],
                window_index=x.window_index[sl],
                frame_index=x.frame_index[sl],
            )
            halves.append(
                dataclasses.replace(
                    b, inputs=inputs, loss_mask=b.loss_mask[sl], target_index=b.target_index[sl]
                )
            )
    _, whole = _train(config, batches[:1], (2, 2, 1), steps=2)
    _, accumulated = _train(config, halves, (2, 2, 1), steps=2, accum=2)
    np.testing.assert_allclose(accumulated, whole, rtol=1e-5)


def test_loss_is_cross_entropy_on_assistant_tokens_only(setup):
    config, batches = setup
    batch = batches[0]
    model = init_model(config, seed=1)
    inputs = jax.tree.map(jnp.asarray, batch.inputs)
    logits = np.asarray(model.forward(inputs), np.float64)
    hidden = model.hidden_states(inputs)
    ids, mask, index = batch.inputs.input_ids, batch.loss_mask, batch.target_index
    # the target slots hold exactly the loss-mask positions, in order, padded with 0
    for row in range(len(ids)):
        np.testing.assert_array_equal(index[row][index[row] > 0], np.flatnonzero(mask[row]))
    kernel = model.output_kernel()
    total, count = target_nll(hidden, jnp.asarray(ids), jnp.asarray(index), kernel, True)
    # direct numpy cross-entropy over the target tokens
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    want = [-logp[b, t - 1, ids[b, t]] for b, t in zip(*np.nonzero(mask), strict=True)]
    assert count == mask[:, 1:].sum() == len(want) > 0
    np.testing.assert_allclose(float(total) / float(count), np.mean(want), rtol=1e-5)
    # labels of prompt (non-target) tokens do not matter
    scrambled = np.where(mask, ids, np.random.default_rng(0).integers(0, 4000, ids.shape))
    total2, _ = target_nll(hidden, jnp.asarray(scrambled), jnp.asarray(index), kernel, True)
    assert float(total2) == float(total)


def _poisoned(batch):
    pixels = batch.inputs.pixel_values.copy()
    pixels[0, 0, 0] = np.inf
    return dataclasses.replace(batch, inputs=dataclasses.replace(batch.inputs, pixel_values=pixels))


def test_non_finite_step_is_skipped_or_stops(setup):
    config, batches = setup
    mesh = make_mesh(MeshConfig(2, 2, 2))
    trainer = SFTTrainer(init_model(config, seed=0, mesh=mesh), mesh, TRAIN, 3)
    before = jax.tree.map(np.asarray, trainer.state["params"])
    metrics = trainer.step([_poisoned(batches[0])])
    assert metrics["skipped"] and not np.isfinite(metrics["loss"])
    after = jax.tree.map(np.asarray, trainer.state["params"])
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not trainer.step([batches[0]])["skipped"]  # training goes on
    stopping = SFTTrainer(
        init_model(config, seed=0, mesh=mesh), mesh, dataclasses.replace(TRAIN, nonfinite="stop"), 3
    )
    with pytest.raises(NonFiniteLossError, match=r"step 1: non-finite loss.*not applied"):
        stopping.step([_poisoned(batches[0])])


@pytest.mark.parametrize("freeze", [True, False])
def test_vision_tower_frozen_or_trained(setup, freeze):
    config, batches = setup
    mesh = make_mesh(MeshConfig(1, 1, 1))
    model = init_model(config, seed=0, mesh=mesh)
    before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    trainer = SFTTrainer(model, mesh, dataclasses.replace(TRAIN, freeze_vision=freeze), 3)
    trainer.step([batches[0]])
    after = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(trainer.model()))}
    for path, value in after.items():
        changed = not np.array_equal(value, before[path])
        if path[0] == "visual":
            assert changed != freeze, path
        elif path[-1] == "kernel":
            assert changed, path


def test_bf16_compute_with_fp32_master_weights(setup):
    config, batches = setup
    mesh = make_mesh(MeshConfig(2, 1, 1))
    model = init_model(config, dtype="mixed_bfloat16", seed=0, mesh=mesh)
    trainer = SFTTrainer(model, mesh, TRAIN, 3)
    fp32_loss = _train(config, batches[:1], (2, 1, 1), steps=1)[1][0]
    metrics = trainer.step([batches[0]])
    assert np.isfinite(metrics["loss"]) and abs(metrics["loss"] - fp32_loss) < 0.05
    leaves = jax.tree.leaves(trainer.state["params"])
    assert {str(x.dtype) for x in leaves} == {"float32"}


def test_trainer_on_an_abstract_model_lowers_the_program_it_trains_with(setup):
    # benchmarks/plan_7b.py compiles the 7B steps from an abstract model: it must get exactly
    # the program (shardings included) that a trainer on real weights runs
    config, batches = setup
    mesh = make_mesh(MeshConfig(1, 4, 2))
    planned = SFTTrainer(abstract_model(config, mesh), mesh, TRAIN, 3)
    real = SFTTrainer(init_model(config, seed=0, mesh=mesh), mesh, TRAIN, 3)
    leaves = jax.tree.leaves((planned.state, planned.frozen))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    inputs, targets = shard_batch(mesh, batches[0])
    assert (
        planned._single.lower(planned.state, planned.frozen, inputs, targets).as_text()
        == real._single.lower(real.state, real.frozen, inputs, targets).as_text()
    )


def test_weight_decay_reaches_matrices_only():
    # the decoder layers are stacked ([layers, ...]): a stacked bias is 2-D, a stacked kernel 3-D
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    params = nnx.state(nnx.eval_shape(lambda: init_model(config)), nnx.Param)
    flat = dict(nnx.to_flat_state(decay_mask(params)))
    decayed = {".".join(map(str, p)) for p, m in flat.items() if m.get_value()}
    assert "language_model.layers.self_attn.q_proj.kernel" in decayed
    assert "language_model.layers.mlp.down_proj.kernel" in decayed
    assert "language_model.embed_tokens.embedding" in decayed
    assert "visual.blocks.0.attn.qkv.kernel" in decayed
    for vector in (
        "language_model.layers.self_attn.q_proj.bias",
        "language_model.layers.input_layernorm.weight",
        "language_model.norm.weight",
        "visual.blocks.0.attn.qkv.bias",
    ):
        assert vector in {".".join(map(str, p)) for p in flat} and vector not in decayed


@pytest.mark.parametrize("kernels", ["cpu", "tpu", "gpu"])
def test_sft_step_holds_cpu_workarounds_only_when_built_for_the_cpu(setup, kernels):
    config, batches = setup
    mesh = make_mesh(MeshConfig(1, 1, 1))
    trainer = SFTTrainer(init_model(config, seed=0, mesh=mesh, kernels=kernels), mesh, TRAIN, 1)
    inputs, target_index = shard_batch(mesh, batches[0])
    lowered = trainer._single.lower(trainer.state, trainer.frozen, inputs, target_index)
    assert (CPU_WORKAROUND in lowered.as_text(debug_info=True)) == (kernels == "cpu")

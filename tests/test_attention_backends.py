"""The TPU and GPU attention paths against the CPU one and against transformers.

The TPU path is Pallas splash attention run in interpret mode on this CPU; the GPU path is
``jax.nn.dot_product_attention`` with its XLA implementation here (cuDNN needs a GPU and bf16).
Both must give the CPU path's outputs at every valid position, and its gradients, on padded GQA
batches; the whole model with either must give transformers' logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import urt_jax
from tests import hf_reference as ref
from urt_jax.model.attention import causal_attention, resolve_kernels, segment_attention
from urt_jax.model.vision_layout import vision_layout
from urt_jax.sharding.mesh import activation_mesh

ACCELERATORS = ("tpu", "gpu")


def _padded_batch(t=40, h=4, kv=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((3, t, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, t, kv, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((3, t, kv, d)), jnp.float32)
    valid = np.ones((3, t), bool)
    valid[1, :11] = False  # left padding: its first queries have no valid key
    valid[2, -7:] = False  # right padding
    return q, k, v, jnp.asarray(valid)


def _check(fn, q, k, v, valid, kernels):
    """Outputs and gradients of ``fn`` with ``kernels`` against the CPU path, valid rows only
    (the loss reads valid positions only, as training does)."""
    weight = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    keep = valid[:, :, None, None]

    def loss(kernels, q, k, v):
        out = fn(q, k, v, valid, q.shape[-1] ** -0.5, kernels)
        return jnp.sum(jnp.where(keep, out, 0) * weight)

    want = fn(q, k, v, valid, q.shape[-1] ** -0.5, "cpu")
    got = jax.jit(fn, static_argnums=(4, 5))(q, k, v, valid, q.shape[-1] ** -0.5, kernels)
    np.testing.assert_allclose(np.where(keep, got, 0), np.where(keep, want, 0), atol=2e-6)
    grads = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    for g, w in zip(grads(kernels, q, k, v), grads("cpu", q, k, v), strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kernels", ACCELERATORS)
def test_causal_attention_matches_the_cpu_path(kernels):
    _check(causal_attention, *_padded_batch(), kernels)


@pytest.mark.parametrize("kernels", ACCELERATORS)
def test_segment_attention_matches_the_cpu_path(kernels):
    """The vision tower's windows and frames: full attention over a valid prefix per segment."""
    rng = np.random.default_rng(2)
    s, length, h, d = 5, 24, 2, 8
    q, k, v = (jnp.asarray(rng.standard_normal((s, length, h, d)), jnp.float32) for _ in range(3))
    valid = jnp.arange(length)[None] < jnp.asarray([24, 16, 9, 1, 20])[:, None]
    _check(segment_attention, q, k, v, valid, kernels)


def test_splash_attention_sharded_over_batch_and_heads():
    """On a mesh the TPU path runs in shard_map: rows over data and fsdp, heads over tensor."""
    q, k, v, valid = _padded_batch(t=24, h=4, kv=2)
    q, k, v, valid = (jnp.concatenate([x, x[:1]]) for x in (q, k, v, valid))  # 4 rows
    want = causal_attention(q, k, v, valid, 0.25, "cpu")
    devices = np.asarray(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    q, k, v, valid = (jax.device_put(x, rows) for x in (q, k, v, valid))
    with activation_mesh(mesh):
        got = jax.jit(causal_attention, static_argnums=(4, 5))(q, k, v, valid, 0.25, "tpu")
        text = (
            jax.jit(causal_attention, static_argnums=(4, 5))
            .lower(q, k, v, valid, 0.25, "tpu")
            .as_text()
        )
    keep = np.asarray(valid)[:, :, None, None]
    np.testing.assert_allclose(np.where(keep, got, 0), np.where(keep, want, 0), atol=2e-6)
    assert "shard_map" in text or "sdy.manual_computation" in text


def test_auto_is_the_backends_own():
    assert resolve_kernels("auto") == {"tpu": "tpu", "gpu": "gpu"}.get(jax.default_backend(), "cpu")
    with pytest.raises(ValueError, match="model.kernels"):
        resolve_kernels("cuda")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = ref.make_model(ref.tiny_config(tie_word_embeddings=False), seed=0, qk_gain=4.0)
    out = tmp_path_factory.mktemp("attention_backends")
    ref.save_model(hf, out)
    return hf, out


@pytest.mark.parametrize("kernels", ACCELERATORS)
def test_model_logits_match_transformers(checkpoint, kernels):
    """A padded GQA batch with images and a video, left-padded: transformers' logits through
    the interpreted TPU kernels (and the GPU path), at fp32."""
    hf, out = checkpoint
    model = urt_jax.from_pretrained(out, dtype="float32", kernels=kernels)
    assert model.kernels == kernels
    rows = [
        [("text", 3), ("image", (8, 12)), ("text", 2), ("video", (3, 4, 4, 0.5)), ("text", 3)],
        [("text", 6), ("image", (4, 6)), ("text", 2)],
    ]
    batch = ref.build_batch(rows, padding_side="left", seed=3)
    expected = ref.hf_logits(hf, batch)
    keys = ("input_ids", "attention_mask", *ref.MEDIA_KEYS)
    got = np.asarray(model(**{k: batch[k] for k in keys if k in batch}), np.float32)
    real = batch["attention_mask"].astype(bool)
    diff = np.abs(got[real] - expected[real]).max()
    print(f"{kernels}: max |logits diff| {diff:.3g}")
    assert diff <= 1e-4

    grid = np.array([[1, 8, 12], [3, 4, 4]])  # the vision tower alone: windows and frames
    pixels = np.random.default_rng(0).standard_normal(
        (int(grid.prod(1).sum()), model.config.vision.patch_dim)
    )
    layout = vision_layout(grid, model.config.vision)
    feats = model.visual(
        pixels.astype(np.float32), layout.rot_pos, layout.window_index, layout.frame_index
    )
    assert np.abs(np.asarray(feats) - ref.hf_vision_features(hf, pixels, grid)).max() <= 1e-4

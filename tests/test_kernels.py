"""The hand-written backward passes of urt_jax.model.kernels against autodiff of the plain
formulas they replace (fp32, GQA, causal + padding masks, a key row fully masked on padding),
and the LM head's log-probabilities of target tokens (urt_jax.train.loss)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.kernels import (
    apply_rotary,
    causal_blocks,
    gqa_attention,
    linear,
    swiglu,
    tokens_major,
)
from urt_jax.model.layers import DTypePolicy, masked_softmax_attention
from urt_jax.model.text import TextModel
from urt_jax.train.loss import token_log_probs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plain_attention(q, k, v, mask, scale):
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    o = masked_softmax_attention(q, k, v, mask[:, None, None], scale, "bqkgd,bskd->bkgqs")
    return o.reshape(b, t, h, d)


def _grads(fn, args, weights):
    loss = lambda *a: jnp.sum(jnp.sin(fn(*a)) * weights)  # noqa: E731  a non-trivial cotangent
    return jax.grad(loss, argnums=tuple(range(len(args))))(*args)


def test_swiglu_matches_autodiff():
    rng = np.random.default_rng(0)
    x, wg, wu, wd = (
        jnp.asarray(rng.standard_normal(s, np.float32) * c)
        for s, c in (((2, 5, 8), 1.0), ((8, 12), 0.5), ((8, 12), 0.5), ((12, 8), 0.5))
    )
    plain = lambda x, wg, wu, wd: (jax.nn.silu(x @ wg) * (x @ wu)) @ wd  # noqa: E731
    fused = lambda x, wg, wu, wd: swiglu(x, wg, wu, wd, True)  # noqa: E731
    np.testing.assert_allclose(fused(x, wg, wu, wd), plain(x, wg, wu, wd), atol=1e-6)
    weights = jnp.asarray(rng.standard_normal((2, 5, 8), np.float32))
    for got, want in zip(
        _grads(fused, (x, wg, wu, wd), weights),
        _grads(plain, (x, wg, wu, wd), weights),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_linear_matches_autodiff():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 8), np.float32))
    w = jnp.asarray(rng.standard_normal((8, 6), np.float32))
    for cpu_layout in (True, False):
        np.testing.assert_array_equal(tokens_major(x, cpu_layout), np.asarray(x).reshape(10, 8).T)
    weights = jnp.asarray(rng.standard_normal((2, 5, 6), np.float32))
    dense = lambda x, w: linear(x, w, True)  # noqa: E731
    for got, want in zip(
        _grads(dense, (x, w), weights), _grads(jnp.dot, (x, w), weights), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_cpu_layout_is_a_value_jit_keys_on():
    """The weight gradient's transposed copy is made in a conditional's branch for XLA:CPU only;
    the flag is an argument, so one jitted function gives each program in turn."""
    x, w = jnp.ones((4, 8)), jnp.ones((8, 6))
    grad = jax.jit(jax.grad(lambda w, cpu: linear(x, w, cpu).sum()), static_argnums=1)
    assert "case" in grad.lower(w, True).as_text()
    assert "case" not in grad.lower(w, False).as_text()


def test_decoder_layers_scan_rolled_for_tpu_unrolled_on_cpu():
    """The stacked decoder layers run as one rolled loop in a program traced for TPU (one
    layer's weights and gradients live at a time), and unrolled for XLA:CPU."""
    config = Qwen25VLConfig.from_yaml(os.path.join(ROOT, "configs", "model", "tiny.yaml"))
    b, t, d = 2, 8, config.text.hidden_size
    x, cos = jnp.ones((b, t, d)), jnp.ones((b, t, config.text.head_dim))
    valid = jnp.ones((b, t), bool)

    @jax.jit
    def grad(graphdef, state):
        loss = lambda s: nnx.merge(graphdef, s)(x, cos, cos, valid).sum()  # noqa: E731
        return jax.grad(loss)(state)

    def program(kernels):
        text = TextModel(config.text, DTypePolicy(), nnx.Rngs(0), kernels=kernels)
        return grad.lower(*nnx.split(text)).as_text()

    assert config.text.num_hidden_layers > 1
    assert "while" in program("tpu")
    assert "while" not in program("cpu")


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_gqa_attention_matches_autodiff(blocks):
    rng = np.random.default_rng(1)
    b, t, h, kv, d = 2, 8, 6, 2, 4
    q = jnp.asarray(rng.standard_normal((b, t, h, d), np.float32))
    k = jnp.asarray(rng.standard_normal((b, t, kv, d), np.float32))
    v = jnp.asarray(rng.standard_normal((b, t, kv, d), np.float32))
    valid = np.ones((b, t), bool)
    valid[1, :3] = False  # left padding on row 1: its first queries attend to nothing
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & valid[:, None, :])
    fn = lambda q, k, v: gqa_attention(q, k, v, mask, d**-0.5, blocks)  # noqa: E731
    ref = lambda q, k, v: _plain_attention(q, k, v, mask, d**-0.5)  # noqa: E731
    # queries with no key at all (padding) are never read: blocks average another set of values
    read = np.asarray(mask).any(-1)[..., None, None]
    np.testing.assert_allclose(fn(q, k, v) * read, ref(q, k, v) * read, atol=1e-6)
    weights = jnp.asarray(rng.standard_normal((b, t, h, d), np.float32)) * read
    for got, want in zip(
        _grads(fn, (q, k, v), weights), _grads(ref, (q, k, v), weights), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_apply_rotary_matches_autodiff():
    """Gradients for x and for cos/sin broadcast over heads, as autodiff of the plain formula."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 8), np.float32))
    cos, sin = (jnp.asarray(rng.standard_normal((2, 5, 1, 8), np.float32)) for _ in range(2))

    def plain(x, cos, sin):
        rotated = jnp.concatenate([-x[..., 4:], x[..., :4]], axis=-1)
        return x * cos + rotated * sin

    np.testing.assert_allclose(apply_rotary(x, cos, sin), plain(x, cos, sin), atol=1e-6)
    weights = jnp.asarray(rng.standard_normal(x.shape, np.float32))
    for got, want in zip(
        _grads(apply_rotary, (x, cos, sin), weights),
        _grads(plain, (x, cos, sin), weights),
        strict=True,
    ):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causal_blocks():
    assert [causal_blocks(n) for n in (64, 128, 192, 224, 256, 512, 2048)] == [1, 2, 3, 2, 4, 8, 8]


def test_token_log_probs_matches_autodiff():
    rng = np.random.default_rng(2)
    h = jnp.asarray(rng.standard_normal((2, 5, 8), np.float32))
    kernel = jnp.asarray(rng.standard_normal((8, 11), np.float32))
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)))

    def plain(h, kernel):
        logp = jax.nn.log_softmax(h @ kernel, axis=-1)
        return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

    fn = lambda h, kernel: token_log_probs(h, kernel, targets, True)  # noqa: E731
    np.testing.assert_allclose(fn(h, kernel), plain(h, kernel), atol=1e-5)
    weights = jnp.asarray(rng.standard_normal((2, 5), np.float32))
    for got, want in zip(
        _grads(fn, (h, kernel), weights), _grads(plain, (h, kernel), weights), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

"""The 7B plan's splash stand-in (benchmarks/plan_attention.py) keeps what splash attention keeps
for its backward pass, so that the compiled plan counts the kernel's HBM buffers."""

import jax
import jax.numpy as jnp

from benchmarks.plan_attention import splash_memory_model
from urt_jax.model.attention import causal_attention


def _saved(q, k, v, valid):
    """Shapes and dtypes of the arrays the backward pass of the TPU path's attention keeps,
    except splash's block tables of its mask (int8, a few bytes per block)."""
    _, backward = jax.vjp(lambda q, k, v: causal_attention(q, k, v, valid, 0.1, "tpu"), q, k, v)
    leaves = [x for x in jax.tree.leaves(backward) if getattr(x, "ndim", 0) >= 2]
    return sorted((tuple(x.shape), str(x.dtype)) for x in leaves if x.dtype != jnp.int8)


def test_stand_in_keeps_the_residuals_of_splash_attention():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 256, 4, 32), jnp.bfloat16)
    k = jax.random.normal(keys[1], (2, 256, 2, 32), jnp.bfloat16)
    v = jax.random.normal(keys[2], (2, 256, 2, 32), jnp.bfloat16)
    valid = jnp.arange(256)[None] >= jnp.asarray([[0], [40]])
    real = _saved(q, k, v, valid)  # Pallas' interpret mode: the kernel's own residuals
    with splash_memory_model():
        stand_in = _saved(q, k, v, valid)
        grads = jax.grad(
            lambda q, k, v: causal_attention(q, k, v, valid, 0.1, "tpu").sum(), (0, 1, 2)
        )(q, k, v)
    assert stand_in == real
    # the output, and the log-sum-exp [rows, KV, G, T] in fp32, besides q, k, v and segments
    assert ((2, 2, 2, 256), "float32") in real
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert all(bool(jnp.isfinite(g.astype(jnp.float32)).all()) for g in grads)

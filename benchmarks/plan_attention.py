"""Splash attention's memory in the 7B plan, counted from its block sizes.

The plan compiles for the TPU on fake CPU devices, where a Pallas kernel cannot be lowered as the
TPU lowers it: interpreted, its buffers are the interpreter's. ``splash_memory_model()`` swaps
the kernel (``urt_jax.model.attention._splash_kernel``; the wrapper around it, with its padding,
transposes and ``shard_map``, stays as it runs) for a stand-in whose inputs, outputs and saved
residuals are splash's own, so the compiled program holds exactly the kernel's HBM buffers.

Per call of the multi-query kernel (one row, one KV head: q [G, T, D], k and v [T, D], with G
query heads per KV head and T padded to the block size), splash attention keeps in HBM:

- forward: the output [G, T, D] in the compute dtype, and the log-sum-exp [G, T] in fp32, which
  it saves for the backward pass;
- backward: di = rowsum(out * d_out) [G, T] in fp32, and the gradients dq [G, T, D] and dk, dv
  [T, D] in the compute dtype.

Everything else lives in a TensorCore's VMEM, never in HBM: for block sizes bq x bkv (128 x 128
here, ``attention.SPLASH_BLOCK``), the q, k and v tiles (bq + 2 bkv) x D, double-buffered, the
scores bq x bkv in fp32, and the running max, sum and output accumulator bq x (D + 2) in fp32:
(2 x 384 x 128 x 2 + 128 x 128 x 4 + 128 x 130 x 4) bytes = 0.32 MiB at D = 128 in bf16. In
particular no [queries, keys] probabilities are ever in HBM.

The stand-in's arithmetic is a few elementwise operations over those buffers (its FLOPs are not
attention's): the plan takes its FLOPs from programs with the real kernel.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from urt_jax.model import attention


@jax.custom_vjp
def _standin(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array) -> jax.Array:
    return _forward(q, k, v, segments)[0]


def _forward(q, k, v, segments):
    keep = (segments > 0).astype(q.dtype)[None, :, None]
    out = (q + (k + v)[None]) * keep  # [G, T, D], like splash's output
    logsumexp = jnp.sum(q.astype(jnp.float32), axis=-1)  # [G, T] fp32, saved for the backward
    return out, (q, k, v, segments, out, logsumexp)


def _backward(residuals, d_out):
    q, k, v, segments, out, logsumexp = residuals
    di = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)  # [G, T] fp32
    scale = (logsumexp + di)[..., None]
    dq = (d_out.astype(jnp.float32) * scale).astype(q.dtype)
    dk = jnp.sum(d_out.astype(jnp.float32) * scale, axis=0).astype(k.dtype)
    dv = jnp.sum(d_out, axis=0).astype(v.dtype)
    return dq, dk, dv, None


_standin.defvjp(_forward, _backward)


def _standin_kernel(length: int, groups: int, causal: bool):
    """What ``attention._splash_kernel`` returns: a kernel over q [G, T, D], k, v [T, D] taking
    ``segment_ids``, and the segment-ids constructor."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    def kernel(q, k, v, segment_ids):
        return _standin(q, k, v, segment_ids.q)

    return kernel, functools.partial(splash.SegmentIds)


@contextlib.contextmanager
def splash_memory_model():
    """Within: models built with ``kernels="tpu"`` trace the splash stand-in."""
    real = attention._splash_kernel
    attention._splash_kernel = _standin_kernel
    try:
        yield
    finally:
        attention._splash_kernel = real

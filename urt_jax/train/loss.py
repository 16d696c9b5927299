"""Next-token cross-entropy on target tokens, as a (sum, count) pair.

Returning the sum and the number of target tokens (not their mean) lets the caller normalise by
the token count of the whole global batch, so that gradient accumulation, any mesh and any split of
the batch give the same loss and the same gradients.

Logits are computed only where a target is predicted: the hidden states at the positions before
the target tokens are gathered ([B, K, D], K a bucket of the longest reply) and only those go
through the LM head. Prompts are most of a sequence, and the LM head with its log-softmax over the
vocabulary is the largest per-token cost of a small model and the largest activation of a big
one ([B, T, 152k] for Qwen2.5-VL).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from urt_jax.model.kernels import tokens_major


def target_log_probs(
    hidden: jax.Array,
    input_ids: jax.Array,
    target_index: jax.Array,
    output_kernel: jax.Array,
    cpu_layout: bool,
) -> jax.Array:
    """log p(input_ids[b, t] | ...) for t = target_index[b, k], in fp32: [B, K].

    ``hidden`` [B, T, D] are final hidden states; ``output_kernel`` [D, V] is the LM head in the
    compute dtype (``Qwen25VL.output_kernel``); ``cpu_layout``: the model is built for the CPU
    (``kernels.tokens_major``)."""
    before = jnp.maximum(target_index - 1, 0)
    h = jnp.take_along_axis(hidden, before[..., None], axis=1)
    targets = jnp.take_along_axis(input_ids, target_index, axis=1)
    return token_log_probs(h.astype(output_kernel.dtype), output_kernel, targets, cpu_layout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def token_log_probs(
    h: jax.Array, kernel: jax.Array, targets: jax.Array, cpu_layout: bool
) -> jax.Array:
    """log softmax(h @ kernel)[targets] in fp32, for h [..., D], kernel [D, V], targets [...].

    The backward is written out (d logits = one_hot - softmax, then two matmuls): autodiff
    through log_softmax and the gather scattered into a zero [..., V] array and transposed the
    [..., V] gradient for the kernel's, both slow passes over [..., V]. The logits and their
    log-sum-exp are kept from the forward (as autodiff kept the log-softmax)."""
    return _token_log_probs_forward(h, kernel, targets, cpu_layout)[0]


def _token_log_probs_forward(h, kernel, targets, cpu_layout):
    logits = jnp.dot(h, kernel).astype(jnp.float32)
    top = jnp.max(logits, axis=-1, keepdims=True)
    log_total = top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True))
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    return (picked - log_total)[..., 0], (h, kernel, targets, logits, log_total)


def _token_log_probs_backward(cpu_layout, res, g):
    h, kernel, targets, logits, log_total = res
    one_hot = jax.nn.one_hot(targets, kernel.shape[1], dtype=jnp.float32)
    # the softmax recomputed from the logits in the same pass: no [..., V] array of
    # probabilities written in the forward and read back here
    d_logits = (g[..., None] * (one_hot - jnp.exp(logits - log_total))).astype(h.dtype)
    d_kernel = jnp.dot(tokens_major(h, cpu_layout), d_logits.reshape(-1, d_logits.shape[-1]))
    return jnp.dot(d_logits, kernel.T), d_kernel, None


token_log_probs.defvjp(_token_log_probs_forward, _token_log_probs_backward)


def target_nll(
    hidden: jax.Array,
    input_ids: jax.Array,
    target_index: jax.Array,
    output_kernel: jax.Array,
    cpu_layout: bool,
) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p over target tokens, number of target tokens). ``target_index`` [B, K] holds
    the positions of each row's target tokens, padded with 0 (position 0 is never a target:
    nothing predicts it)."""
    valid = (target_index > 0).astype(jnp.float32)
    nll = -target_log_probs(hidden, input_ids, target_index, output_kernel, cpu_layout)
    return jnp.sum(nll * valid), jnp.sum(valid)

"""Next-token cross-entropy on target tokens, as a (sum, count) pair.

Returning the sum and the number of target tokens (not their mean) lets the caller normalise by
the token count of the whole global batch, so that gradient accumulation, any mesh and any split of
the batch give the same loss and the same gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """log p(input_ids[:, t+1] | ...) from logits[:, t], in fp32: [B, T-1]."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]


def masked_nll(
    logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p over target tokens, number of target tokens). loss_mask[b, t] marks
    input_ids[b, t] as a target; position 0 can never be one (nothing predicts it)."""
    targets = loss_mask[:, 1:].astype(jnp.float32)
    nll = -token_log_probs(logits, input_ids)
    return jnp.sum(nll * targets), jnp.sum(targets)

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

from collections.abc import Callable

import jax
import jax.numpy as jnp


def target_log_probs(
    hidden: jax.Array,
    input_ids: jax.Array,
    target_index: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    """log p(input_ids[b, t] | ...) for t = target_index[b, k], in fp32: [B, K].

    ``hidden`` [B, T, D] are final hidden states; ``logits_fn`` maps [..., D] to logits."""
    before = jnp.maximum(target_index - 1, 0)
    h = jnp.take_along_axis(hidden, before[..., None], axis=1)
    logp = jax.nn.log_softmax(logits_fn(h).astype(jnp.float32), axis=-1)
    targets = jnp.take_along_axis(input_ids, target_index, axis=1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def target_nll(
    hidden: jax.Array,
    input_ids: jax.Array,
    target_index: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p over target tokens, number of target tokens). ``target_index`` [B, K] holds
    the positions of each row's target tokens, padded with 0 (position 0 is never a target:
    nothing predicts it)."""
    valid = (target_index > 0).astype(jnp.float32)
    nll = -target_log_probs(hidden, input_ids, target_index, logits_fn)
    return jnp.sum(nll * valid), jnp.sum(valid)

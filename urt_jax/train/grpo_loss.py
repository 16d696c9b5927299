"""The GRPO objective: group advantages, the clipped per-token policy term, the KL penalty to a
reference model, and the loss aggregation, each a named setting with the released values as
defaults (UnifiedReward-Think's TRL-0.17-based trainer):

- advantage A_i = (r_i - mean_group(r)) / (std_group(r) + 1e-4), sample std (torch's default)
- per-token loss -(min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) - beta * KL), with
  ratio = exp(logp - logp_old); one update per batch makes logp_old = stop_gradient(logp)
- KL by the k3 estimator exp(ref - logp) - (ref - logp) - 1, (ref - logp) clamped to +-10
- mean over each completion's tokens up to and including its first end token, then over sequences
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    beta: float = 0.04
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_estimator: str = "k3"
    kl_clamp: float = 10.0
    aggregation: str = "seq_mean_token_mean"
    advantage_std: str = "sample"  # "sample" (ddof 1) | "population" (ddof 0)
    advantage_eps: float = 1e-4
    advantage_scale: str = "group"  # "group" | "batch" | "none"


# ---------------------------------------------------------------------------- advantages
def group_advantages(
    rewards: jax.Array,
    group_size: int,
    std: str = "sample",
    eps: float = 1e-4,
    scale: str = "group",
) -> jax.Array:
    """Rewards [N*G] (prompt-major) -> advantages [N*G]."""
    if std not in ("sample", "population"):
        raise ValueError(f"advantage_std must be 'sample' or 'population', found {std!r}")
    ddof = 1 if std == "sample" else 0
    r = rewards.reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale == "group":
        out = centred / (jnp.std(r, axis=1, ddof=ddof, keepdims=True) + eps)
    elif scale == "batch":
        out = centred / (jnp.std(rewards, ddof=ddof) + eps)
    elif scale == "none":
        out = centred
    else:
        raise ValueError(f"advantage_scale must be 'group', 'batch' or 'none', found {scale!r}")
    return out.reshape(-1)


# ---------------------------------------------------------------------------- KL estimators
def _k1(logp, ref, clamp):
    return logp - ref


def _k2(logp, ref, clamp):
    return 0.5 * (logp - ref) ** 2


def _k3(logp, ref, clamp):
    d = jnp.clip(ref - logp, -clamp, clamp)
    return jnp.exp(d) - d - 1.0


KL_ESTIMATORS: dict[str, Callable] = {"k1": _k1, "k2": _k2, "k3": _k3}


# ---------------------------------------------------------------------------- aggregation
def _seq_mean_token_mean(per_token, mask):
    per_seq = (per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return per_seq.mean()


def _token_mean(per_token, mask):
    return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _seq_mean_token_sum(per_token, mask):
    return (per_token * mask).sum(-1).mean()


def _seq_mean_token_sum_norm(per_token, mask):
    """Dr. GRPO: token sums divided by the (constant) completion budget."""
    return (per_token * mask).sum(-1).mean() / per_token.shape[-1]


AGGREGATIONS: dict[str, Callable] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "token_mean": _token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def completion_mask(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """[R, N] float: 1 for generated tokens up to and including the end token."""
    return (jnp.arange(tokens.shape[-1])[None, :] < lengths[:, None]).astype(jnp.float32)


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: GRPOLossConfig = GRPOLossConfig(),
) -> tuple[jax.Array, dict]:
    """Loss (scalar) and metrics from per-token log-probs [R, N] of the policy (with gradients),
    of the policy that sampled (old), and of the reference model; advantages [R]; mask [R, N]."""
    if cfg.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"kl_estimator {cfg.kl_estimator!r}: expected one of {sorted(KL_ESTIMATORS)}"
        )
    if cfg.aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {cfg.aggregation!r}: expected one of {sorted(AGGREGATIONS)}")
    mask = mask.astype(jnp.float32)
    adv = advantages[:, None]
    ratio = jnp.exp(logp - old_logp)
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
    policy = jnp.minimum(ratio * adv, clipped_ratio * adv)
    kl = KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp, cfg.kl_clamp)
    per_token = -(policy - cfg.beta * kl)
    loss = AGGREGATIONS[cfg.aggregation](per_token, mask)
    n = jnp.maximum(mask.sum(), 1.0)
    is_clipped = ((ratio < 1.0 - cfg.clip_eps_low) & (adv < 0)) | (
        (ratio > 1.0 + cfg.clip_eps_high) & (adv > 0)
    )
    metrics = {
        "kl": (kl * mask).sum() / n,
        "clip_fraction": (is_clipped * mask).sum() / n,
        "ratio_mean": (ratio * mask).sum() / n,
    }
    return loss, jax.lax.stop_gradient(metrics)

"""The GRPO objective: group advantages, the clipped per-token policy term, the KL penalty to a
reference model, and the loss aggregation, each a named setting with the released values as
defaults (UnifiedReward-Think's TRL-0.17-based trainer):

- advantage A_i = (r_i - mean_group(r)) / (std_group(r) + 1e-4), sample std (torch's default)
- per-token loss -(min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) - beta * KL), with
  ratio = exp(logp - logp_old); one update per batch makes logp_old = stop_gradient(logp)
- KL by the k3 estimator exp(ref - logp) - (ref - logp) - 1, (ref - logp) clamped to +-10
- mean over each completion's tokens up to and including its first end token, then over sequences
  (written as per-token weights, so that a generation batch split into micro-batches gives the
  same loss and gradients)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class GRPOLossConfig:
    """The objective's settings; the run config's ``grpo`` section extends it."""

    beta: float = 0.04  # weight of the KL penalty to the reference model (0: no reference)
    clip_eps_low: float = 0.2  # the ratio's lower clip: 1 - clip_eps_low
    clip_eps_high: float = 0.2  # the ratio's upper clip: 1 + clip_eps_high
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_clamp: float = 10.0  # the log-ratio of the KL estimate clamped to +-kl_clamp
    aggregation: str = "seq_mean_token_mean"  # | token_mean | seq_mean_token_sum[_norm]
    advantage_std: str = "sample"  # group std of the advantages: sample (ddof 1) | population
    advantage_eps: float = 1e-4  # added to the std before dividing
    advantage_scale: str = "group"  # divide by the group's std, the batch's, or none


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
# Each aggregation is a weighting of the per-token losses, loss = sum(per-token loss x weights),
# with the weights [R, N] computed on the host from the completion mask of the whole generation
# batch. A micro-batch's share of the loss is the same sum over its rows, so the shares (and
# their gradients) add up to the batch's loss exactly, however the rows are split.
def _seq_mean_token_mean(mask: np.ndarray) -> np.ndarray:
    return mask / np.maximum(mask.sum(-1, keepdims=True), 1.0) / mask.shape[0]


def _token_mean(mask: np.ndarray) -> np.ndarray:
    return mask / max(float(mask.sum()), 1.0)


def _seq_mean_token_sum(mask: np.ndarray) -> np.ndarray:
    return mask / mask.shape[0]


def _seq_mean_token_sum_norm(mask: np.ndarray) -> np.ndarray:
    """Dr. GRPO: token sums divided by the (constant) completion budget."""
    return mask / (mask.shape[0] * mask.shape[1])


AGGREGATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "token_mean": _token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def token_weights(mask: np.ndarray, aggregation: str) -> np.ndarray:
    """[R, N] float32 weights of the per-token losses for the whole generation batch's
    completion mask [R, N]: the loss is sum(per-token loss x weights)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r}: expected one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[aggregation](np.asarray(mask, np.float64)).astype(np.float32)


def completion_mask(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[R, N] float32 for sampled tokens [R, N] and their lengths [R]: 1 for generated tokens
    up to and including the end token."""
    width = np.shape(tokens)[-1]
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def check_loss_config(cfg: GRPOLossConfig) -> None:
    if cfg.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"kl_estimator {cfg.kl_estimator!r}: expected one of {sorted(KL_ESTIMATORS)}"
        )
    if cfg.aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {cfg.aggregation!r}: expected one of {sorted(AGGREGATIONS)}")


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    weights: jax.Array,
    cfg: GRPOLossConfig | None = None,
) -> tuple[jax.Array, dict]:
    """Loss and token sums of the metrics, from per-token log-probs [R, N] of the policy (with
    gradients), of the policy that sampled (old) and of the reference model; advantages [R];
    the completion mask [R, N]; and ``token_weights`` of the whole generation batch's mask, or
    these rows of them (a micro-batch): the loss is then this micro-batch's share of the batch's.
    ``metric_means`` turns the sums, added over micro-batches, into token means. ``cfg`` None:
    the released settings (``GRPOLossConfig()``)."""
    cfg = GRPOLossConfig() if cfg is None else cfg
    check_loss_config(cfg)
    mask = mask.astype(jnp.float32)
    adv = advantages[:, None]
    ratio = jnp.exp(logp - old_logp)
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
    policy = jnp.minimum(ratio * adv, clipped_ratio * adv)
    kl = KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp, cfg.kl_clamp)
    per_token = -(policy - cfg.beta * kl)
    loss = (per_token * weights).sum()
    is_clipped = ((ratio < 1.0 - cfg.clip_eps_low) & (adv < 0)) | (
        (ratio > 1.0 + cfg.clip_eps_high) & (adv > 0)
    )
    sums = {
        "kl_sum": (kl * mask).sum(),
        "clipped_tokens": (is_clipped * mask).sum(),
        "ratio_sum": (ratio * mask).sum(),
        "tokens": mask.sum(),
    }
    return loss, jax.lax.stop_gradient(sums)


def metric_means(sums: dict) -> dict:
    """Token means (kl, clip_fraction, ratio_mean) from ``grpo_loss``'s sums (host scalars or
    arrays, each added over the micro-batches of one update)."""
    n = max(float(sums["tokens"]), 1.0)
    return {
        "kl": float(sums["kl_sum"]) / n,
        "clip_fraction": float(sums["clipped_tokens"]) / n,
        "ratio_mean": float(sums["ratio_sum"]) / n,
    }

"""The GRPO objective equals a direct numpy computation for every setting, and a generation batch
split into micro-batches gives the same loss and gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urt_jax.train.grpo_loss import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    GRPOLossConfig,
    completion_mask,
    group_advantages,
    grpo_loss,
    metric_means,
    token_weights,
)

G, PROMPTS, N = 4, 3, 7


def _numpy_advantages(r, std, eps, scale):
    ddof = 1 if std == "sample" else 0
    g = r.reshape(-1, G)
    out = np.empty_like(g)
    for i, row in enumerate(g):
        centred = row - row.mean()
        if scale == "group":
            out[i] = centred / (row.std(ddof=ddof) + eps)
        elif scale == "batch":
            out[i] = centred / (r.std(ddof=ddof) + eps)
        else:
            out[i] = centred
    return out.reshape(-1)


def _numpy_loss(logp, old, ref, adv, mask, cfg):
    rows, cols = logp.shape
    per_token = np.zeros_like(logp)
    for i in range(rows):
        for t in range(cols):
            ratio = np.exp(logp[i, t] - old[i, t])
            clipped = min(max(ratio, 1 - cfg.clip_eps_low), 1 + cfg.clip_eps_high)
            policy = min(ratio * adv[i], clipped * adv[i])
            if cfg.kl_estimator == "k3":
                d = min(max(ref[i, t] - logp[i, t], -cfg.kl_clamp), cfg.kl_clamp)
                kl = np.exp(d) - d - 1
            elif cfg.kl_estimator == "k2":
                kl = 0.5 * (logp[i, t] - ref[i, t]) ** 2
            else:
                kl = logp[i, t] - ref[i, t]
            per_token[i, t] = -(policy - cfg.beta * kl)
    if cfg.aggregation == "seq_mean_token_mean":
        return np.mean([(per_token[i] * mask[i]).sum() / mask[i].sum() for i in range(rows)])
    if cfg.aggregation == "token_mean":
        return (per_token * mask).sum() / mask.sum()
    if cfg.aggregation == "seq_mean_token_sum":
        return np.mean([(per_token[i] * mask[i]).sum() for i in range(rows)])
    return np.mean([(per_token[i] * mask[i]).sum() for i in range(rows)]) / cols


@pytest.mark.parametrize(
    "std,scale",
    list(itertools.product(("sample", "population"), ("group", "batch", "none"))),
)
def test_advantages(std, scale):
    rewards = np.random.default_rng(0).integers(0, 3, G * PROMPTS).astype(np.float64)
    rewards[:G] = 1.0  # one group with identical rewards: advantage 0, no division by zero
    got = group_advantages(jnp.asarray(rewards, jnp.float32), G, std=std, eps=1e-4, scale=scale)
    np.testing.assert_allclose(
        np.asarray(got), _numpy_advantages(rewards, std, 1e-4, scale), rtol=1e-5, atol=1e-6
    )
    assert np.all(np.asarray(got)[:G] == 0)


@pytest.mark.parametrize(
    "kl,aggregation,clip",
    list(itertools.product(sorted(KL_ESTIMATORS), sorted(AGGREGATIONS), (0.2, 0.05))),
)
def test_loss_equals_numpy(kl, aggregation, clip):
    rng = np.random.default_rng(1)
    rows = G * PROMPTS
    logp = -rng.uniform(0.1, 3.0, (rows, N))
    old = logp + rng.normal(0, 0.3, (rows, N))  # several updates per batch: ratio != 1
    ref = logp + rng.normal(0, 2.0, (rows, N))
    ref[0, 0] = logp[0, 0] + 30.0  # exercises the +-10 clamp of k3
    adv = rng.normal(0, 1, rows)
    lengths = rng.integers(1, N + 1, rows)
    mask = np.asarray(completion_mask(jnp.zeros((rows, N)), jnp.asarray(lengths)))
    cfg = GRPOLossConfig(
        beta=0.04,
        clip_eps_low=clip,
        clip_eps_high=clip + 0.08,
        kl_estimator=kl,
        aggregation=aggregation,
    )
    weights = token_weights(mask, aggregation)
    got, sums = grpo_loss(
        *(jnp.asarray(a, jnp.float32) for a in (logp, old, ref, adv, mask, weights)), cfg
    )
    want = _numpy_loss(logp, old, ref, adv, mask, cfg)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)  # float32 vs float64
    metrics = metric_means(sums)
    assert 0 <= metrics["clip_fraction"] <= 1
    np.testing.assert_allclose(metrics["ratio_mean"], np.exp(logp - old)[mask > 0].mean(), 1e-5)


def test_single_update_gradient_is_advantage_weighted():
    """With old = stop_gradient(logp) and beta = 0, d loss / d logp = -A / len per token."""
    logp = jnp.asarray([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]])
    adv = jnp.asarray([1.5, -0.5])
    mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    cfg = GRPOLossConfig(beta=0.0)

    def loss(lp):
        weights = token_weights(np.asarray(mask), cfg.aggregation)
        return grpo_loss(lp, jax.lax.stop_gradient(lp), lp, adv, mask, weights, cfg)[0]

    grad = np.asarray(jax.grad(loss)(logp))
    want = -np.asarray(adv)[:, None] * np.asarray(mask) / np.asarray(mask).sum(1, keepdims=True) / 2
    np.testing.assert_allclose(grad, want, rtol=1e-6)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batches_add_up_to_the_batch(aggregation):
    """Rows split 4 + 8: the micro-batches' losses and gradients (each with its rows of the whole
    batch's token weights) sum to the whole batch's, for every aggregation."""
    rng = np.random.default_rng(2)
    rows = G * PROMPTS
    logp = jnp.asarray(-rng.uniform(0.1, 3.0, (rows, N)), jnp.float32)
    old = logp + jnp.asarray(rng.normal(0, 0.3, (rows, N)), jnp.float32)
    ref = logp + jnp.asarray(rng.normal(0, 1.0, (rows, N)), jnp.float32)
    adv = jnp.asarray(rng.normal(0, 1, rows), jnp.float32)
    mask = np.asarray(completion_mask(logp, jnp.asarray(rng.integers(1, N + 1, rows))))
    weights = token_weights(mask, aggregation)
    cfg = GRPOLossConfig(aggregation=aggregation)

    def loss(lp, rows):
        return grpo_loss(lp, old[rows], ref[rows], adv[rows], mask[rows], weights[rows], cfg)

    whole, whole_grad = jax.value_and_grad(lambda lp: loss(lp, slice(None))[0])(logp)
    parts = [slice(0, 4), slice(4, rows)]
    shares = [jax.value_and_grad(lambda lp, s=s: loss(lp, s)[0])(logp[s]) for s in parts]
    np.testing.assert_allclose(sum(float(v) for v, _ in shares), float(whole), rtol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([np.asarray(g) for _, g in shares]), np.asarray(whole_grad), rtol=1e-6
    )
    sums = [loss(logp[s], s)[1] for s in parts]
    added = {k: sum(float(x[k]) for x in sums) for k in sums[0]}
    assert metric_means(added) == pytest.approx(metric_means(loss(logp, slice(None))[1]))


def test_unknown_aggregation_is_named():
    with pytest.raises(ValueError, match="aggregation 'mean'"):
        token_weights(np.ones((2, 3)), "mean")

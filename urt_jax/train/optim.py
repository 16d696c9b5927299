"""The optimiser: AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay
on matrices only (not on biases, norm weights or other vectors)."""

from __future__ import annotations

import jax
import optax

from urt_jax.config import TrainSection


def learning_rate_schedule(cfg: TrainSection, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def decay_mask(params) -> object:
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: TrainSection, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(
            schedule,
            b1=cfg.adam_b1,
            b2=cfg.adam_b2,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        ),
    )

"""The optimiser: AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay
on matrices only (not on biases, norm weights or other vectors)."""

from __future__ import annotations

import jax
import optax

from urt_jax.config import TrainSection
from urt_jax.model.text import stacked_dims


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
    """True for the matrices of the model, the stacked decoder layers' counted per layer."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim - stacked_dims(path) >= 2, params
    )


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


def opt_state_shardings(params, tx: optax.GradientTransformation, mesh):
    """Shardings of ``tx.init(params)``: each moment like its parameter, scalars replicated.
    ``params`` may be arrays or sharded ShapeDtypeStructs (ahead-of-time planning)."""
    from urt_jax.sharding.mesh import replicated as replicated_sharding

    # Without explicit out_shardings XLA is free to replicate the moments (it does): every
    # device would hold the whole optimiser state instead of its shard.
    return optax.tree_utils.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        jax.eval_shape(tx.init, params),
        jax.tree.map(lambda x: x.sharding, params),
        transform_non_params=lambda _: replicated_sharding(mesh),
    )


def is_abstract(tree) -> bool:
    """True for a tree of ``jax.ShapeDtypeStruct`` (a model built by ``nnx.eval_shape`` to be
    lowered and compiled ahead of time, as benchmarks/plan_7b.py does): nothing to allocate."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def init_train_state(params, tx: optax.GradientTransformation, mesh, seed: int) -> dict:
    """{params, opt_state, step, rng} on the mesh: optimiser moments follow the parameters'
    shardings, scalars are replicated. For abstract ``params`` (sharded ShapeDtypeStructs,
    ``is_abstract``) the state is abstract too, with the same shapes and shardings."""
    import jax.numpy as jnp

    from urt_jax.sharding.mesh import replicated as replicated_sharding

    replicated = replicated_sharding(mesh)
    shardings = opt_state_shardings(params, tx, mesh)
    if is_abstract(params):
        abstract = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
        opt_state = jax.tree.map(abstract, jax.eval_shape(tx.init, params), shardings)
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
    else:
        opt_state = jax.jit(tx.init, out_shardings=shardings)(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
        rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), replicated)
    return {"params": params, "opt_state": opt_state, "step": step, "rng": rng}


def zero_accumulator(params, mesh, num_scalars: int):
    """A jitted function returning fp32 zeros shaped and sharded like ``params`` (the gradient
    sum of gradient accumulation) and ``num_scalars`` replicated scalar zeros: one compiled call,
    not a transfer per parameter."""
    import jax.numpy as jnp

    from urt_jax.sharding.mesh import replicated as replicated_sharding

    shapes = [p.shape for p in jax.tree.leaves(params)]
    treedef = jax.tree.structure(params)
    shardings = jax.tree.map(lambda p: p.sharding, params)
    scalar = replicated_sharding(mesh)

    def zeros():
        grads = jax.tree.unflatten(treedef, [jnp.zeros(shape, jnp.float32) for shape in shapes])
        return grads, *(jnp.zeros((), jnp.float32) for _ in range(num_scalars))

    return jax.jit(zeros, out_shardings=(shardings, *([scalar] * num_scalars)))


def apply_if_finite(tx: optax.GradientTransformation, state: dict, grads, loss):
    """(new state, gradient norm, finite): the AdamW update, or the state untouched (step still
    counted) when the loss or the gradient norm is NaN/Inf. Runs inside a jitted step."""
    import jax.numpy as jnp

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # a branch, not a select between both results: the skipped update costs nothing
    params, opt_state = jax.lax.cond(
        finite, update, lambda p, o: (p, o), state["params"], state["opt_state"]
    )
    new_state = {
        "params": params,
        "opt_state": opt_state,
        "step": state["step"] + 1,
        "rng": state["rng"],
    }
    return new_state, grad_norm, finite

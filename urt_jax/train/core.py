"""The sharded optimiser step SFT and GRPO share, driven by a loss function.

A trainer gives a loss function ``loss_fn(model, *batch, **static) -> (loss, sums)``: ``loss``
is this micro-batch's share of the step's loss (a sum over its tokens, so that shares add up to
the whole batch's however the rows are split) and ``sums`` scalar token sums for the metrics.
``StepCore``, the base of both trainers, splits the model once into its graph, the trainable
parameters and the frozen ones, holds the train state on the mesh, and compiles three programs
with explicit shardings and donated buffers: ``_single`` (one micro-batch: gradients and the
update in one program), ``_accumulate`` (add one micro-batch's gradients, loss and sums to an
accumulator) and ``_apply`` (divide by the ``normalizer`` sum when there is one, clip, AdamW).
A non-finite loss or gradient norm leaves parameters and optimiser state untouched
(``train.nonfinite``: skip or stop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from urt_jax.config import TrainSection
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.sharding.mesh import activation_mesh
from urt_jax.sharding.mesh import replicated as replicated_sharding
from urt_jax.train.optim import (
    apply_if_finite,
    init_train_state,
    learning_rate_schedule,
    make_optimizer,
    zero_accumulator,
)

log = logging.getLogger(__name__)

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(TypedDict):
    """What a checkpoint holds of a trainer: its trainable parameters, the optimiser state, the
    optimiser step and the random key (as key data)."""

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


class NonFiniteLossError(RuntimeError):
    pass


def trainable_filter(freeze_vision: bool):
    def keep(path, value) -> bool:
        return isinstance(value, nnx.Param) and not (freeze_vision and path[0] == "visual")

    return keep


def handle_nonfinite(cfg: TrainSection, step: int, metrics: dict) -> None:
    """A skipped (non-finite) update: a warning, or NonFiniteLossError with train.nonfinite=stop."""
    message = (
        f"step {step}: non-finite loss {metrics['loss']} or gradient norm "
        f"{metrics['grad_norm']}; the update was not applied"
    )
    if cfg.nonfinite == "stop":
        raise NonFiniteLossError(message + " (train.nonfinite=stop)")
    log.warning("%s (train.nonfinite=skip)", message)


class StepCore:
    """The train state of ``model``'s trainable parameters on ``mesh`` and the jitted programs
    of an optimiser step under ``loss_fn`` (see the module docstring); the base of SFTTrainer
    and GRPOTrainer. ``sum_names``: the keys of
    ``loss_fn``'s sums; ``normalizer``: the one the summed gradients and loss are divided by
    before the update (SFT's target-token count), or None (GRPO: its loss is weighted already);
    ``static_argnames``: ``loss_fn``'s keyword arguments that are static under jit."""

    def __init__(
        self,
        model: Qwen25VL,
        mesh: Mesh,
        train: TrainSection,
        total_steps: int,
        seed: int,
        loss_fn: LossFn,
        sum_names: Sequence[str],
        normalizer: str | None = None,
        static_argnames: Sequence[str] = (),
    ):
        self.mesh, self.train = mesh, train
        self.loss_fn, self.sum_names, self.normalizer = loss_fn, tuple(sum_names), normalizer
        self.graphdef, params, self.frozen = nnx.split(
            model, trainable_filter(train.freeze_vision), ...
        )
        self.tx = make_optimizer(train, total_steps)
        self.schedule = learning_rate_schedule(train, total_steps)
        self.state: TrainState = init_train_state(params, self.tx, mesh, seed)
        state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
        param_shardings = state_shardings["params"]
        replicated = replicated_sharding(mesh)
        static = tuple(static_argnames)
        self._single = jax.jit(
            self._single_fn,
            donate_argnums=(0,),
            static_argnames=static,
            out_shardings=(state_shardings, replicated),
        )
        self._accumulate = jax.jit(
            self._accumulate_fn,
            donate_argnums=(0,),
            static_argnames=static,
            out_shardings=(param_shardings, replicated, replicated),
        )
        self._apply = jax.jit(
            self._apply_fn,
            donate_argnums=(0,),
            in_shardings=(state_shardings, param_shardings, replicated, replicated),
            out_shardings=(state_shardings, replicated),
        )
        self._zeros = None
        self.num_trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        self.num_frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.frozen))

    # ------------------------------------------------------------------ traced pieces
    def model(self, params=None, frozen=None) -> Qwen25VL:
        """The model with ``params`` (default: the current ones) and ``frozen``."""
        params = self.state["params"] if params is None else params
        return nnx.merge(self.graphdef, params, self.frozen if frozen is None else frozen)

    def value_and_grad(self, params, frozen, *batch, **static):
        """(loss, sums), gradients of this micro-batch."""

        def loss(params):
            with activation_mesh(self.mesh):
                return self.loss_fn(self.model(params, frozen), *batch, **static)

        return jax.value_and_grad(loss, has_aux=True)(params)

    def _accumulate_fn(self, acc, params, frozen, *batch, **static):
        grads_acc, loss_acc, sums_acc = acc
        (loss, sums), grads = self.value_and_grad(params, frozen, *batch, **static)
        sums = {k: sums_acc[k] + sums[k] for k in self.sum_names}
        return jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss, sums

    def _single_fn(self, state: TrainState, frozen, *batch, **static):
        (loss, sums), grads = self.value_and_grad(state["params"], frozen, *batch, **static)
        return self._apply_fn(state, grads, loss, sums)

    def _apply_fn(self, state: TrainState, grads, loss, sums):
        if self.normalizer is not None:
            denominator = jnp.maximum(sums[self.normalizer], 1.0)
            grads = jax.tree.map(lambda g: g / denominator, grads)
            loss = loss / denominator
        new_state, grad_norm, finite = apply_if_finite(self.tx, state, grads, loss)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite,
            "learning_rate": self.schedule(state["step"]),
            **sums,
        }
        return new_state, metrics

    # ------------------------------------------------------------------ host side
    def zero_accumulator(self):
        """Zero gradients (sharded like the parameters), loss and sums."""
        if self._zeros is None:
            self._zeros = zero_accumulator(self.state["params"], self.mesh, 1 + len(self.sum_names))
        grads, loss, *sums = self._zeros()
        return grads, loss, dict(zip(self.sum_names, sums, strict=True))

    def run(self, micro_batches: Sequence[tuple], **static) -> dict[str, np.ndarray]:
        """One optimiser step over ``micro_batches`` (each the positional arguments of
        ``loss_fn`` after the model): one program for a single micro-batch, else accumulate
        then apply. Returns the step's metrics on the host; a non-finite update is handled per
        ``train.nonfinite``."""
        if len(micro_batches) == 1:
            self.state, metrics = self._single(self.state, self.frozen, *micro_batches[0], **static)
        else:
            acc = self.zero_accumulator()
            for batch in micro_batches:
                acc = self._accumulate(acc, self.state["params"], self.frozen, *batch, **static)
            self.state, metrics = self._apply(self.state, *acc)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        if not bool(metrics["finite"]):
            handle_nonfinite(
                self.train,
                int(np.asarray(self.state["step"])),
                {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])},
            )
        return metrics

    def abstract_accumulator(self) -> tuple:
        """The accumulator's ShapeDtypeStructs with their shardings (ahead-of-time lowering)."""
        replicated = replicated_sharding(self.mesh)
        scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
        grads = jax.tree.map(
            lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32, sharding=p.sharding),
            self.state["params"],
        )
        return grads, scalar, {name: scalar for name in self.sum_names}

    def abstract_state(self) -> TrainState:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state
        )

"""Supervised fine-tuning (the cold start and the rejection-sampling SFT) on a device mesh.

The model is split once into a graph definition, the trainable parameters and the frozen ones
(the vision tower and merger by default, as released). Two jitted functions run a step, both with
explicit shardings from the logical-axis rules and donated buffers:
``accumulate`` adds one micro-batch's summed token loss, token count and gradients, and ``apply``
divides by the token count of the whole global batch, clips, and applies AdamW. The loss therefore
does not depend on the mesh or on how the batch is split into micro-batches. A non-finite loss or
gradient norm leaves parameters and optimiser state untouched (``train.nonfinite``: skip or stop).
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from urt_jax.config import TrainSection
from urt_jax.data.batching import Batch, batch_sizes, pad_batch
from urt_jax.model.inputs import ModelInputs
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.sharding.mesh import activation_mesh, batch_sharding
from urt_jax.sharding.mesh import replicated as replicated_sharding
from urt_jax.train.loss import target_nll
from urt_jax.train.optim import (
    apply_if_finite,
    init_train_state,
    learning_rate_schedule,
    make_optimizer,
    zero_accumulator,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def trainable_filter(freeze_vision: bool):
    def keep(path, value) -> bool:
        return isinstance(value, nnx.Param) and not (freeze_vision and path[0] == "visual")

    return keep


def put_global(mesh: Mesh, array: np.ndarray, batch_axis: int | None) -> jax.Array:
    """A global array from this process's rows (the batch axis split over data and fsdp)."""
    array = np.asarray(array)
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, array.ndim, batch_axis), array
    )


def shard_batch(mesh: Mesh, batch: Batch) -> tuple[ModelInputs, jax.Array]:
    inputs = batch.inputs.map_with_batch_axis(lambda a, axis: put_global(mesh, a, axis))
    return inputs, put_global(mesh, batch.target_index, 0)


def agree_across_processes(batch: Batch, config, pad_id: int = 0) -> Batch:
    """Pads each process's local batch to the largest shapes of all processes (multi-host runs
    must feed one global shape; buckets are chosen per process from its own examples)."""
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils

    sizes = np.asarray(multihost_utils.process_allgather(batch_sizes(batch))).max(axis=0)
    return pad_batch(batch, sizes, config, pad_id)


def handle_nonfinite(cfg: TrainSection, step: int, metrics: dict) -> None:
    """A skipped (non-finite) update: a warning, or NonFiniteLossError with train.nonfinite=stop."""
    message = (
        f"step {step}: non-finite loss {metrics['loss']} or gradient norm "
        f"{metrics['grad_norm']}; the update was not applied"
    )
    if cfg.nonfinite == "stop":
        raise NonFiniteLossError(message + " (train.nonfinite=stop)")
    log.warning("%s (train.nonfinite=skip)", message)


class SFTTrainer:
    def __init__(
        self, model: Qwen25VL, mesh: Mesh, cfg: TrainSection, total_steps: int, seed: int = 0
    ):
        self.mesh, self.cfg = mesh, cfg
        self.config = model.config
        self.graphdef, params, self.frozen = nnx.split(
            model, trainable_filter(cfg.freeze_vision), ...
        )
        self.tx = make_optimizer(cfg, total_steps)
        self.schedule = learning_rate_schedule(cfg, total_steps)
        replicated = replicated_sharding(mesh)
        self.state = init_train_state(params, self.tx, mesh, seed)
        self.state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
        self.param_shardings = self.state_shardings["params"]
        self._accumulate = jax.jit(
            self._accumulate_fn,
            donate_argnums=(0,),
            out_shardings=(self.param_shardings, replicated, replicated),
        )
        self._apply = jax.jit(
            self._apply_fn,
            donate_argnums=(0,),
            in_shardings=(self.state_shardings, self.param_shardings, replicated, replicated),
            out_shardings=(self.state_shardings, replicated),
        )
        self._single = jax.jit(
            self._single_fn,
            donate_argnums=(0,),
            out_shardings=(self.state_shardings, replicated),
        )
        self._zeros = None
        self.num_trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        self.num_frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.frozen))

    # ------------------------------------------------------------------ jitted pieces
    def _loss_sum(self, params, frozen, inputs: ModelInputs, target_index):
        model = nnx.merge(self.graphdef, params, frozen)
        with activation_mesh(self.mesh):
            hidden = model.hidden_states(inputs)
        return target_nll(
            hidden, inputs.input_ids, target_index, model.output_kernel(), model.cpu_layout
        )

    def _accumulate_fn(self, acc, params, frozen, inputs, target_index):
        grads_acc, loss_acc, count_acc = acc
        (loss_sum, count), grads = jax.value_and_grad(self._loss_sum, has_aux=True)(
            params, frozen, inputs, target_index
        )
        return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss_sum, count_acc + count)

    def _single_fn(self, state, frozen, inputs, target_index):
        """One micro-batch: gradients and the update in one program (no accumulator)."""
        (loss_sum, count), grads = jax.value_and_grad(self._loss_sum, has_aux=True)(
            state["params"], frozen, inputs, target_index
        )
        return self._apply_fn(state, grads, loss_sum, count)

    def _apply_fn(self, state, grads_sum, loss_sum, count):
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads_sum)
        loss = loss_sum / denom
        new_state, grad_norm, finite = apply_if_finite(self.tx, state, grads, loss)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite,
            "learning_rate": self.schedule(state["step"]),
            "target_tokens": count,
        }
        return new_state, metrics

    # ------------------------------------------------------------------ host side
    def zero_accumulator(self):
        """Zero gradients (sharded like the parameters), loss sum and token count."""
        if self._zeros is None:
            self._zeros = zero_accumulator(self.state["params"], self.mesh, num_scalars=2)
        return self._zeros()

    def step(self, micro_batches: list[Batch]) -> dict:
        """One optimiser step over the given micro-batches; returns host metrics."""
        t0 = time.perf_counter()
        batches = [agree_across_processes(b, self.config) for b in micro_batches]
        tokens = sum(int(np.asarray(b.inputs.attention_mask).sum()) for b in batches)
        if len(batches) == 1:
            inputs, target_index = shard_batch(self.mesh, batches[0])
            self.state, metrics = self._single(self.state, self.frozen, inputs, target_index)
        else:
            acc = self.zero_accumulator()
            for batch in batches:
                inputs, target_index = shard_batch(self.mesh, batch)
                acc = self._accumulate(acc, self.state["params"], self.frozen, inputs, target_index)
            self.state, metrics = self._apply(self.state, *acc)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        elapsed = time.perf_counter() - t0
        out = {
            "loss": float(metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]),
            "learning_rate": float(metrics["learning_rate"]),
            "target_tokens": int(metrics["target_tokens"]),
            "tokens": tokens * jax.process_count(),
            "tokens_per_second": tokens * jax.process_count() / elapsed,
            "step_seconds": elapsed,
            "skipped": not bool(metrics["finite"]),
        }
        if out["skipped"]:
            handle_nonfinite(self.cfg, int(np.asarray(self.state["step"])), out)
        return out

    def model(self) -> Qwen25VL:
        return nnx.merge(self.graphdef, self.state["params"], self.frozen)

    def abstract_state(self):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state
        )

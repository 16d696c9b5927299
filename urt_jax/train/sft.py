"""Supervised fine-tuning (the cold start and the rejection-sampling SFT) on a device mesh.

The step is ``core.StepCore``'s under the summed token loss of the reply (``loss.target_nll``):
``accumulate`` adds one micro-batch's summed loss, target-token count and gradients, and
``apply`` divides by the token count of the whole global batch, clips and applies AdamW. The
loss therefore does not depend on the mesh or on how the batch is split into micro-batches.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from jax.sharding import Mesh

from urt_jax.config import TrainSection
from urt_jax.data.batching import Batch, batch_sizes, pad_batch
from urt_jax.model.inputs import ModelInputs
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.sharding.mesh import batch_sharding
from urt_jax.train.core import StepCore
from urt_jax.train.loss import target_nll


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


def sft_loss(model: Qwen25VL, inputs: ModelInputs, target_index: jax.Array):
    """(summed negative log-likelihood of the target tokens, {target_tokens: their count})."""
    nll, count = target_nll(
        model.hidden_states(inputs),
        inputs.input_ids,
        target_index,
        model.output_kernel(),
        model.cpu_layout,
    )
    return nll, {"target_tokens": count}


class SFTTrainer(StepCore):
    def __init__(
        self, model: Qwen25VL, mesh: Mesh, cfg: TrainSection, total_steps: int, seed: int = 0
    ):
        self.cfg = cfg
        self.config = model.config
        super().__init__(
            model,
            mesh,
            cfg,
            total_steps,
            seed,
            sft_loss,
            sum_names=("target_tokens",),
            normalizer="target_tokens",
        )

    def step(self, micro_batches: list[Batch]) -> dict:
        """One optimiser step over the given micro-batches; returns host metrics."""
        t0 = time.perf_counter()
        batches = [agree_across_processes(b, self.config) for b in micro_batches]
        tokens = sum(int(np.asarray(b.inputs.attention_mask).sum()) for b in batches)
        metrics = self.run([shard_batch(self.mesh, b) for b in batches])
        elapsed = time.perf_counter() - t0
        return {
            "loss": float(metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]),
            "learning_rate": float(metrics["learning_rate"]),
            "target_tokens": int(metrics["target_tokens"]),
            "tokens": tokens * jax.process_count(),
            "tokens_per_second": tokens * jax.process_count() / elapsed,
            "step_seconds": elapsed,
            "skipped": not bool(metrics["finite"]),
        }

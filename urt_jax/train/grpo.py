"""GRPO on a device mesh: group rollouts from the KV-cache sampler, rewards from the registry,
group advantages, and the clipped, KL-regularised policy update of ``grpo_loss``.

One generation batch is ``prompts_per_step`` prompts x G completions, rows prompt-major. Prompts
are left-padded to the sampler's bucket P, so every completion starts at column P of the
teacher-forced sequence [prompt | completion] and the completion log-probs are one slice.
Each piece is one jitted function on the mesh, with the batch split over data x fsdp:
``completion_logprobs`` (used for the frozen reference and, with several updates per batch, for
the policy that sampled) and the update, ``core.StepCore``'s step under ``grpo_loss`` (loss,
gradients, AdamW, skipped when non-finite). With ``grpo.micro_batch_rows`` the update runs over
micro-batches of the generation batch, and the log-probs per micro-batch too; the loss
is a weighted sum of per-token terms with weights from the whole batch (``token_weights``), so
the update is the same however the rows are split.
The reference is a copy of the starting trainable parameters made on the device, sharing the
frozen vision tower: it never leaves the mesh.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from urt_jax.config import GRPOSection, TrainSection
from urt_jax.data.batching import pow2_at_least
from urt_jax.data.records import PreferenceRecord
from urt_jax.data.vl_processor import VISION_KEYS, pad_rows
from urt_jax.generate.prompts import (
    completion_texts,
    end_of_turn_ids,
    prompt_examples,
)
from urt_jax.generate.sampler import sample
from urt_jax.model.inputs import ModelInputs, prepare_inputs, select_rows, share_media
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.rewards import RewardSpec, compute_rewards, parse_reward_specs
from urt_jax.sharding.mesh import activation_mesh, batch_ways, put_whole
from urt_jax.train.core import StepCore
from urt_jax.train.grpo_loss import (
    check_loss_config,
    completion_mask,
    group_advantages,
    grpo_loss,
    metric_means,
    token_weights,
)
from urt_jax.train.loss import target_log_probs
from urt_jax.train.optim import is_abstract


def optimizer_settings(train: TrainSection, g: GRPOSection) -> TrainSection:
    """The ``train`` section with GRPO's learning rate, warm-up and number of updates."""
    return dataclasses.replace(
        train,
        learning_rate=g.learning_rate,
        warmup_ratio=g.warmup_ratio,
        max_steps=g.max_steps * g.num_iterations,
        grad_accum=1,
    )


def completion_log_probs(model: Qwen25VL, inputs: ModelInputs, prompt_length: int) -> jax.Array:
    """log p(completion token j) for the tokens from column P on: [R, N] (LM head on those
    positions only)."""
    rows, total = inputs.input_ids.shape
    index = jnp.broadcast_to(
        jnp.arange(prompt_length, total, dtype=jnp.int32), (rows, total - prompt_length)
    )
    return target_log_probs(
        model.hidden_states(inputs),
        inputs.input_ids,
        index,
        model.output_kernel(),
        model.cpu_layout,
    )


# ----------------------------------------------------------------------------- rollouts
@dataclasses.dataclass
class Rollouts:
    """One generation batch on the host, ready for the update."""

    inputs: ModelInputs  # [R, P + N] prompt | completion, numpy; each prompt's media once
    completion_mask: np.ndarray  # [R, N] float32: generated tokens up to and including the end
    prompt_length: int  # P
    texts: list[str]
    rewards: np.ndarray  # [R] weighted total
    reward_parts: dict[str, np.ndarray]  # name -> [R] unweighted
    advantages: np.ndarray  # [R]
    lengths: np.ndarray  # [R]
    sample_logprobs: np.ndarray  # [R, N] from the sampler (the policy that sampled)
    sampling_seconds: float


def rollout(
    model: Qwen25VL,
    tokenizer,
    records: Sequence[PreferenceRecord],
    to_example,
    g: GRPOSection,
    rewards: Sequence[RewardSpec],
    seed: int,
    eos_token_ids: Sequence[int] | None = None,
) -> Rollouts:
    """G completions per prompt from the current policy, their rewards and group advantages.
    ``eos_token_ids``: where completions stop; None: the end of the turn (``end_of_turn_ids``),
    empty: never (every completion is ``max_new_tokens`` long)."""
    t0 = time.perf_counter()
    pad = tokenizer.pad_token_id or 0
    eos = end_of_turn_ids(tokenizer, to_example) if eos_token_ids is None else list(eos_token_ids)
    examples = prompt_examples(records, to_example)
    batch = pad_rows(examples, pad)
    out = sample(
        model,
        batch,
        num_samples=g.num_generations,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        eos_token_ids=eos,
        seed=seed,
        pad_id=pad,
    )
    sampling_seconds = time.perf_counter() - t0
    texts = completion_texts(tokenizer, out)
    solutions = [r.verdict for r in records for _ in range(g.num_generations)]
    total, parts = compute_rewards(rewards, texts, solutions)
    advantages = np.asarray(
        group_advantages(
            jnp.asarray(total),
            g.num_generations,
            g.advantage_std,
            g.advantage_eps,
            g.advantage_scale,
        )
    )
    completions = completion_mask(out.tokens, out.lengths)
    rep = lambda a: np.repeat(a, g.num_generations, axis=0)  # noqa: E731  prompt-major
    ids = np.concatenate([rep(out.prompt_ids), out.tokens], axis=1)
    mask = np.concatenate([rep(out.prompt_mask), completions.astype(np.int64)], axis=1)
    repeated = pad_rows([e for e in examples for _ in range(g.num_generations)], pad)
    inputs, _ = prepare_inputs(
        model.config,
        ids,
        mask,
        **{k: repeated[k] for k in VISION_KEYS if k in repeated},
        round_up=lambda kind, k: pow2_at_least(k, 1),
    )
    return Rollouts(
        share_media(inputs, g.num_generations),
        completions,
        out.prompt_ids.shape[1],
        texts,
        total,
        parts,
        advantages,
        out.lengths,
        out.logprobs,
        sampling_seconds,
    )


def media_rows_per_part(media_row, parts: list[np.ndarray], ways: int) -> int | None:
    """How many media rows each part of a batch with shared media (``ModelInputs.media_row``)
    holds: the most any part reads, rounded up to a multiple of the ``ways`` the batch is split
    over, so that each device encodes its share (None: the batch does not share media)."""
    if media_row is None:
        return None
    most = max(len(np.unique(np.asarray(media_row)[part])) for part in parts)
    return -(-most // ways) * ways


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MicroBatch:
    """Rows of a generation batch for one forward/backward pass, on the mesh."""

    inputs: ModelInputs  # [r, P + N]
    mask: jax.Array  # [r, N] completion mask
    weights: jax.Array  # [r, N] these rows of the whole batch's token weights
    advantages: jax.Array  # [r]


# ----------------------------------------------------------------------------- trainer
SUM_NAMES = ("kl_sum", "clipped_tokens", "ratio_sum", "tokens")  # grpo_loss's token sums


class GRPOTrainer(StepCore):
    """The GRPO update on ``core.StepCore``'s step under ``grpo_loss`` (no normaliser: the
    per-token weights of ``token_weights`` make each micro-batch's loss its share of the
    batch's), the reference copy of the starting weights, and the completion log-probs."""

    def __init__(
        self,
        model: Qwen25VL,
        mesh: Mesh,
        train: TrainSection,
        g: GRPOSection,
        seed: int = 0,
    ):
        self.g = g
        check_loss_config(g)
        self.rewards = parse_reward_specs(g.rewards)
        self.config = model.config
        settings = optimizer_settings(train, g)
        super().__init__(
            model,
            mesh,
            settings,
            settings.max_steps,
            seed,
            self._loss,
            sum_names=SUM_NAMES,
            static_argnames=("prompt_length",),
        )
        params = self.state["params"]
        # The reference: the starting weights, copied on the device with the same shardings
        # (an abstract model, compiled ahead of time, has nothing to copy).
        self.ref_params = (
            params if is_abstract(params) else jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params)
        )
        self._logprobs = jax.jit(self._logprobs_fn, static_argnames=("prompt_length",))
        self._update = self._single  # the whole generation batch in one program

    # ------------------------------------------------------------------ traced pieces
    def _logprobs_fn(self, params, frozen, inputs: ModelInputs, prompt_length: int):
        with activation_mesh(self.mesh):
            return completion_log_probs(self.model(params, frozen), inputs, prompt_length)

    def _loss(self, model: Qwen25VL, micro: MicroBatch, old_logp, ref_logp, *, prompt_length):
        """This micro-batch's share of the loss and the metrics' token sums; without old or
        reference log-probs (one update per batch; beta 0) the policy's own, held."""
        logp = completion_log_probs(model, micro.inputs, prompt_length)
        held = jax.lax.stop_gradient(logp)
        return grpo_loss(
            logp,
            held if old_logp is None else old_logp,
            held if ref_logp is None else ref_logp,
            micro.advantages,
            micro.mask,
            micro.weights,
            self.g,
        )

    # ------------------------------------------------------------------ host side
    def rollout(self, tokenizer, records, to_example, seed: int) -> Rollouts:
        return rollout(self.model(), tokenizer, records, to_example, self.g, self.rewards, seed)

    def micro_batches(self, r: Rollouts) -> list[MicroBatch]:
        """The generation batch's rows in micro-batches of ``grpo.micro_batch_rows`` (all rows
        when unset), on the mesh, each with its rows of the whole batch's token weights."""
        rows = r.inputs.input_ids.shape[0]
        size = self.g.micro_batch_rows or rows
        ways = batch_ways(self.mesh)
        if rows % size:
            raise ValueError(
                f"grpo.micro_batch_rows={size} does not divide the {rows} rows of a generation "
                f"batch (prompts_per_step x num_generations)"
            )
        if size % ways:
            raise ValueError(
                f"grpo: micro-batches of {size} rows do not divide over data x fsdp = {ways} "
                f"devices (set grpo.micro_batch_rows or prompts_per_step x num_generations)"
            )
        weights = token_weights(r.completion_mask, self.g.aggregation)
        advantages = r.advantages.astype(np.float32)

        def put(a: np.ndarray, axis: int = 0) -> jax.Array:
            # every process holds the whole generation batch (it sampled all of it)
            return put_whole(self.mesh, a, axis)

        parts = [np.arange(lo, lo + size) for lo in range(0, rows, size)]
        media = media_rows_per_part(r.inputs.media_row, parts, ways)
        return [
            MicroBatch(
                select_rows(r.inputs, part, media).map_with_batch_axis(put),
                put(r.completion_mask[part]),
                put(weights[part]),
                put(advantages[part]),
            )
            for part in parts
        ]

    def step(self, r: Rollouts) -> dict:
        """``num_iterations`` policy updates on one generation batch, each over all of its
        micro-batches (gradients summed, then one AdamW step); returns host metrics."""
        t0 = time.perf_counter()
        micro = self.micro_batches(r)
        p = r.prompt_length

        def logprobs(params):
            return [self._logprobs(params, self.frozen, m.inputs, prompt_length=p) for m in micro]

        none = [None] * len(micro)
        ref = logprobs(self.ref_params) if self.g.beta != 0.0 else none
        # one update per batch: the policy that sampled is the current one
        old = logprobs(self.state["params"]) if self.g.num_iterations > 1 else none
        updates = []
        for _ in range(self.g.num_iterations):
            batches = [(m, old[i], ref[i]) for i, m in enumerate(micro)]
            metrics = self.run(batches, prompt_length=p)
            metrics.update(metric_means({k: metrics[k] for k in SUM_NAMES}))
            updates.append(metrics)
        update_seconds = time.perf_counter() - t0
        return self._metrics(r, updates, update_seconds)

    def _metrics(self, r: Rollouts, updates: list[dict], update_seconds: float) -> dict:
        last = updates[-1]
        generated = int(r.lengths.sum())
        group_std = r.rewards.reshape(-1, self.g.num_generations).std(axis=1)
        out = {
            "loss": float(np.mean([float(u["loss"]) for u in updates])),
            "grad_norm": float(last["grad_norm"]),
            "learning_rate": float(last["learning_rate"]),
            "kl": float(np.mean([float(u["kl"]) for u in updates])),
            "clip_fraction": float(np.mean([float(u["clip_fraction"]) for u in updates])),
            "reward": float(r.rewards.mean()),
            "reward_std": float(r.rewards.std()),
            "groups_without_signal": float((group_std == 0).mean()),
            "advantage_abs_mean": float(np.abs(r.advantages).mean()),
            "advantage_std": float(r.advantages.std()),
            "completion_length": float(r.lengths.mean()),
            "completion_length_max": int(r.lengths.max()),
            "sampling_seconds": r.sampling_seconds,
            "update_seconds": update_seconds,
            "sampled_tokens_per_second": generated / max(r.sampling_seconds, 1e-9),
            "tokens_per_second": int(r.inputs.attention_mask.sum())
            * len(updates)
            / max(update_seconds, 1e-9),
            "skipped": sum(not bool(u["finite"]) for u in updates),
        }
        for name, values in r.reward_parts.items():
            out[f"reward/{name}"] = float(values.mean())
            out[f"reward/{name}_std"] = float(values.std())
        if "accuracy" in r.reward_parts:
            out["accuracy"] = out["reward/accuracy"]
        if "format" in r.reward_parts:
            out["format_rate"] = out["reward/format"]
        return out

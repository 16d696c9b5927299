"""The urt_jax side: the project's own SFT trainer, jitted forward and group sampler, the
recompilation count, the SFT step's breakdown and the sampling call's profile."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import workload as wl
from benchmarks.decode_profile import profile_sampling
from benchmarks.timing import median_seconds
from urt_jax.config import TrainSection
from urt_jax.data.batching import Buckets, batch_sizes, collate
from urt_jax.model.hf import from_pretrained
from urt_jax.sharding.mesh import MeshConfig, make_mesh
from urt_jax.train import sft as sft_mod

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA backend compilations (every jit cache miss, any function) via jax.monitoring."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_: object) -> None:
        if event == COMPILE_EVENT:
            self.count += 1
            self.seconds += duration


def _trainer(model, mesh) -> sft_mod.SFTTrainer:
    cfg = TrainSection(
        max_steps=100_000, learning_rate=1e-5, warmup_ratio=0.0, progress=False, grad_accum=1
    )  # freeze_vision=True, weight_decay=0, clip 1.0: the project defaults
    return sft_mod.SFTTrainer(model, mesh, cfg, cfg.max_steps, seed=0)


class Ours:
    """One task on the urt_jax side; ``call()`` runs one timed unit of work to completion."""

    def __init__(self, task: str, model_dir: str, shape: wl.Shape):
        self.task, self.shape = task, shape
        self.counter = CompileCounter()
        self.mesh = make_mesh(MeshConfig())
        self.model = from_pretrained(model_dir, dtype="float32", mesh=self.mesh)
        self.config = self.model.config
        self.extra: dict = {}
        self.call: Callable[[], dict | None] = getattr(self, f"_setup_{task}")()

    # ------------------------------------------------------------------ tasks
    def _setup_sft(self):
        self.batch = collate(wl.sft_examples(self.shape), self.config, Buckets())
        self.trainer = _trainer(self.model, self.mesh)
        self.extra["trainable_params"] = self.trainer.num_trainable
        self.extra["frozen_params"] = self.trainer.num_frozen

        def call():
            out = self.trainer.step([self.batch])
            return {"loss": out["loss"]}

        return call

    def _setup_forward(self):
        batch = collate(wl.sft_examples(self.shape), self.config, Buckets())
        graphdef, state = nnx.split(self.model)
        fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s).forward(x))
        inputs = jax.tree.map(jnp.asarray, batch.inputs)

        def call():
            fwd(state, inputs).block_until_ready()

        return call

    def _setup_sample(self):
        from urt_jax.generate.sampler import sample

        self.prompt = wl.sampling_prompt(self.shape)
        self.sample_options = dict(
            num_samples=self.shape.samples,
            max_new_tokens=self.shape.new_tokens,
            temperature=1.0,
            eos_token_ids=[],
        )
        seeds = iter(range(1_000_000))

        def call():
            out = sample(self.model, self.prompt, **self.sample_options, seed=next(seeds))
            return {"new_tokens": int(out.lengths.sum())}

        return call

    def _setup_recompiles(self):
        """Warm-up: one step per bucketed shape the mixed batches can take; then every call
        is one step on the next mixed batch, reporting the compilations it caused."""
        buckets = Buckets(lengths=tuple(self.shape.mixed_lengths))
        min_targets = getattr(buckets, "min_targets", 64)
        warm, seen = [], set()
        for rows in wl.warmup_examples(self.shape, 7, min_targets):
            b = collate(rows, self.config, buckets)
            key = tuple(batch_sizes(b).tolist())
            if key not in seen:
                seen.add(key)
                warm.append(b)
        mixed = [collate(r, self.config, buckets) for r in wl.mixed_examples(self.shape, 30, 11)]
        keys = [tuple(batch_sizes(b).tolist()) for b in mixed]
        self.extra.update(
            warmup_shapes=len(warm),
            mixed_distinct_shapes=len(set(keys)),
            mixed_shapes_not_in_warmup=len(set(keys) - seen),
            mixed_tokens=int(sum(int(b.inputs.attention_mask.sum()) for b in mixed)),
        )
        self.trainer = _trainer(self.model, self.mesh)
        queue = iter(warm + mixed)
        self.extra["warmup_steps"] = len(warm)

        def call():
            before = self.counter.count
            self.trainer.step([next(queue)])
            return {"compiles": self.counter.count - before}

        return call

    def _setup_grpo(self):
        """One GRPO step per call: ``rollout`` (G completions per prompt, forced to full length
        by passing no end-of-turn ids, then rewards and advantages) and ``trainer.step`` (one
        update on the generation batch). The trainer's jitted reference log-probs are wrapped
        with a timer that waits for their result: the one sync this adds splits the update."""
        from benchmarks import grpo_workload as gw
        from urt_jax.config import GRPOSection
        from urt_jax.data.examples import ExampleBuilder
        from urt_jax.data.templates import Templates
        from urt_jax.data.vl_processor import Processor
        from urt_jax.train import grpo as grpo_mod

        s = gw.settings(self.shape)
        # the rest (clip 0.2, k3 KL, seq-mean-token-mean, format + accuracy): the defaults
        g = GRPOSection(
            max_steps=s.max_steps, prompts_per_step=s.prompts, num_generations=s.num_generations,
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
            learning_rate=s.learning_rate, beta=s.beta, num_iterations=1,
            micro_batch_rows=s.micro_batch_rows,
        )  # fmt: skip
        train = TrainSection(progress=False)  # freeze_vision, AdamW, clip 1.0: the defaults
        trainer = grpo_mod.GRPOTrainer(self.model, self.mesh, train, g, seed=s.seed)
        processor = Processor.from_pretrained(self.model.source_dir)
        builder = ExampleBuilder.for_processor(
            processor, Templates.load(gw.TEMPLATES), self.config, include_reply=False
        )
        records = gw.records(self.shape, s.prompts, s.seed)
        ref_seconds = [0.0]
        logprobs = trainer._logprobs

        def timed_logprobs(*args, **kwargs):
            t0 = time.perf_counter()
            out = jax.block_until_ready(logprobs(*args, **kwargs))
            ref_seconds[0] += time.perf_counter() - t0
            return out

        trainer._logprobs = timed_logprobs
        self.trainer = trainer
        self.extra.update(
            trainable_params=int(sum(x.size for x in jax.tree.leaves(trainer.state["params"]))),
            settings=dataclasses.asdict(s),
            eos="no end-of-turn ids passed to the sampler (rollout(..., eos_token_ids=[]))",
            media="each prompt's images encoded once per forward (ModelInputs.media_row)",
        )
        seeds = iter(range(1_000_000))

        def call():
            ref_seconds[0] = 0.0
            t0 = time.perf_counter()
            r = grpo_mod.rollout(
                trainer.model(), processor.tokenizer, records, builder, trainer.g,
                trainer.rewards, next(seeds), eos_token_ids=[],
            )  # fmt: skip
            t1 = time.perf_counter()
            m = trainer.step(r)
            t2 = time.perf_counter()
            ids, mask = r.inputs.input_ids, r.inputs.attention_mask
            p = r.prompt_length
            prompts = [row[:p][keep[:p] == 1] for row, keep in zip(ids, mask, strict=True)]
            self.extra.update(
                prompt_digest=gw.prompt_digest(prompts),
                prompt_tokens=sorted(int(k[:p].sum()) for k in mask[:: s.num_generations]),
                padded_length=int(ids.shape[1]),
                last_reward=m["reward"],
            )
            return {
                "loss": m["loss"],
                "generation": r.sampling_seconds,
                "rewards + host prep": t1 - t0 - r.sampling_seconds,
                "ref log-probs": ref_seconds[0],
                "update (loss + backward + AdamW)": t2 - t1 - ref_seconds[0],
                "completion_tokens": int(r.lengths.sum()),
            }

        return call

    # ------------------------------------------------------------------ breakdown
    def breakdown(self) -> dict:
        """Where the time goes: the SFT step's pieces, or the sampling call's profile."""
        if self.task == "sample":
            return profile_sampling(self.model, self.prompt, **self.sample_options, seed=0)
        return self._sft_breakdown()

    def _sft_breakdown(self, repeats: int = 3) -> dict:
        """Median seconds of the pieces of one SFT step, each jitted on its own, and XLA's own
        FLOP count of the forward+backward program."""
        tr, batch = self.trainer, self.batch
        examples = wl.sft_examples(self.shape)
        inputs, targets = sft_mod.shard_batch(self.mesh, batch)
        params, frozen = tr.state["params"], tr.frozen
        vision = jax.jit(lambda p, f, x: nnx.merge(tr.graphdef, p, f).vision_features(x))
        hidden = jax.jit(lambda p, f, x: nnx.merge(tr.graphdef, p, f).hidden_states(x))
        loss = jax.jit(lambda p, f, x, t: sft_mod.sft_loss(nnx.merge(tr.graphdef, p, f), x, t))

        def accumulate():  # the live parameters: apply donates the old ones
            acc = tr.zero_accumulator()
            return tr._accumulate(acc, tr.state["params"], frozen, inputs, targets)

        pieces: dict[str, Callable[[], object]] = {
            "host: collate (numpy, data pipeline)": lambda: collate(
                examples, self.config, Buckets()
            ),
            "host: shard_batch + zero accumulator": lambda: (
                sft_mod.shard_batch(self.mesh, batch),
                tr.zero_accumulator(),
            ),
            "vision tower forward (frozen)": lambda: vision(params, frozen, inputs),
            "forward to final hidden states": lambda: hidden(params, frozen, inputs),
            "forward + loss (LM head on targets)": lambda: loss(params, frozen, inputs, targets),
            "forward + backward (accumulate)": accumulate,
        }
        out: dict = {}
        for name, fn in pieces.items():
            out[name] = median_seconds(fn, repeats)
        acc = jax.block_until_ready(accumulate())
        apply_times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            tr.state, m = tr._apply(tr.state, *acc)
            jax.block_until_ready((m, tr.state))
            apply_times.append(time.perf_counter() - t0)
            acc = jax.block_until_ready(accumulate())  # not timed: apply alone above
        out["clip + AdamW (apply)"] = statistics.median(apply_times[1:])
        lowered = tr._accumulate.lower(tr.zero_accumulator(), tr.state["params"], frozen, inputs,
                                       targets)  # fmt: skip
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return {"seconds": out, "xla_flops_forward_backward": float(cost.get("flops", 0.0))}

    def trace(self, out_dir: str, steps: int = 2) -> dict:
        """A jax.profiler trace (TensorBoard / Perfetto) of ``steps`` SFT steps."""
        jax.profiler.start_trace(out_dir)
        try:
            for _ in range(steps):
                self.call()
        finally:
            jax.profiler.stop_trace()
        return {"dir": out_dir, "steps": steps}

    def info(self) -> dict:
        return {
            **self.extra,
            "compiles": self.counter.count,
            "compile_seconds": round(self.counter.seconds, 2),
            "jax": jax.__version__,
            "devices": str(jax.devices()),
        }

"""The TRL side of the GRPO measurement: trl.GRPOTrainer on transformers' Qwen2.5-VL (sdpa
attention, fp32, CPU), the settings of benchmarks/grpo_workload.py, the same checkpoint,
tokenizer, prompts and reward functions as the urt_jax side.

How a step is timed: ``trainer.train()`` runs in a thread of this process, held by a callback at
the start of training and at the end of every optimizer step; each ``call()`` lets it run one
step and waits for the step's end. So a timed step is everything TRL's training loop does for one
optimizer step, as a user's run does it: the generation batch from the trainer's dataloader (4
prompts x G, RepeatSampler), ``_prepare_inputs`` (generation, decoding, rewards, advantages, the
reference log-probs), the loss forward and backward of every micro-batch (``training_step``),
gradient clipping, AdamW, the scheduler and the callbacks. gradient_accumulation_steps =
steps_per_generation = rows / micro-batch rows, so one optimizer step consumes exactly one
generation batch: every optimizer step generates, and TRL computes no old-policy log-probs (the
policy that sampled is the one being updated). Calling ``training_step`` by hand would skip the
loop's optimizer step and bookkeeping; the thread is idle outside ``call()``, so it takes no CPU
from the other side's turns.

Phases come from timers wrapped around the trainer's own methods: ``_generate_single_turn``
(HF ``generate`` and its EOS masking), ``_get_per_token_logps_and_entropies`` outside autograd
(the reference model's log-probs), ``compute_loss`` (policy log-probs and the loss) and
``training_step`` (the rest of it is the backward).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from benchmarks import grpo_workload as gw
from benchmarks import workload as wl


def _torch():
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def processor(model_dir: str):
    """transformers' Qwen2_5_VLProcessor from the checkpoint's tokenizer, chat template and
    pixel settings, with the PIL image processor and no video processor (AutoProcessor would
    build a video processor, which needs torchvision)."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    cfg = gw.preprocessor_config()
    images = Qwen2VLImageProcessorPil(
        min_pixels=cfg["min_pixels"],
        max_pixels=cfg["max_pixels"],
        patch_size=cfg["patch_size"],
        temporal_patch_size=cfg["temporal_patch_size"],
        merge_size=cfg["merge_size"],
        image_mean=cfg["image_mean"],
        image_std=cfg["image_std"],
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    with open(os.path.join(model_dir, "chat_template.jinja")) as f:
        template = f.read()

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor with no video processor: its constructor checks every part's
        class, and transformers' video processor class is a placeholder without torchvision."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyProcessor(
        image_processor=images, tokenizer=tokenizer, video_processor=None, chat_template=template
    )


class _Timers:
    """Seconds spent in wrapped methods since the last ``reset``, by phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds.clear()

    def wrap(self, fn: Callable, phase: Callable[[], str] | str) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                name = phase if isinstance(phase, str) else phase()
                self.seconds[name] += time.perf_counter() - t0

        return timed


def _gate():
    """A TrainerCallback that holds training before the first step and after every step until
    ``go`` is released; ``done`` gets None at every step's end (or the exception that ended
    training)."""
    from transformers import TrainerCallback

    class Gate(TrainerCallback):
        def __init__(self) -> None:
            self.go = threading.Semaphore(0)
            self.done: queue.Queue = queue.Queue()
            self.ready = threading.Event()

        def on_train_begin(self, args, state, control, **kwargs):
            import torch

            self.threads = torch.get_num_threads()  # intra-op threads of the training thread
            self.ready.set()
            self.go.acquire()

        def on_step_end(self, args, state, control, **kwargs):
            self.done.put(None)
            self.go.acquire()

    return Gate()


class TRLGRPO:
    """trl.GRPOTrainer, one optimizer step (one generation batch) per ``call()``."""

    def __init__(self, task: str, model_dir: str, shape: wl.Shape):
        if task != "grpo":
            raise ValueError(f"the TRL side runs the grpo task only, not {task!r}")
        torch = self.torch = _torch()
        from datasets import Dataset
        from transformers import Qwen2_5_VLForConditionalGeneration
        from trl import GRPOConfig, GRPOTrainer

        s = gw.settings(shape)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        for p in model.model.visual.parameters():
            p.requires_grad_(False)  # the vision tower and merger frozen, as urt_jax's default
        config = GRPOConfig(
            # nothing is logged or saved there: next to the checkpoint, in the run's directory
            output_dir=os.path.join(os.path.dirname(os.path.abspath(model_dir)), "trl_output"),
            # one optimizer step on one generation batch, in micro-batches as urt_jax's side
            per_device_train_batch_size=s.micro_batch_rows,
            gradient_accumulation_steps=s.rows // s.micro_batch_rows,
            steps_per_generation=s.rows // s.micro_batch_rows,
            num_generations=s.num_generations,
            num_iterations=1,
            max_completion_length=s.max_new_tokens,
            # HF generate suppresses every eos id until min_new_tokens: full-length completions
            generation_kwargs={"min_new_tokens": s.max_new_tokens},
            temperature=s.temperature,
            top_p=s.top_p,
            beta=s.beta,
            epsilon=0.2,
            loss_type="grpo",  # per-sequence token means, then the mean: urt_jax's aggregation
            scale_rewards="group",
            learning_rate=s.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            max_steps=s.max_steps,
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=False,
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,  # urt_jax's side runs without remat
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            seed=s.seed,
        )
        self.gate = _gate()
        dataset = Dataset.from_list(gw.trl_rows(shape, s.prompts, s.seed))
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=list(gw.TRL_REWARDS),
            args=config,
            train_dataset=dataset,
            processing_class=processor(model_dir),
            callbacks=[self.gate],
        )
        self.trainer, self.settings = trainer, s
        self.timers = _Timers()
        self.last: dict = {}
        self._instrument()
        self.thread = threading.Thread(target=self._train, name="trl-train", daemon=True)
        self.thread.start()
        while not self.gate.ready.wait(0.5):  # optimizer and dataloader set up before timing
            if not self.thread.is_alive():
                raise RuntimeError("trl training ended before its first step")
        self.extra = {
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "settings": dataclasses.asdict(s),
            "attn_implementation": "sdpa",
            "optimizer": type(trainer.optimizer.optimizer).__name__
            + f"({config.optim.value if hasattr(config.optim, 'value') else config.optim})",
            "eos": "generation_kwargs min_new_tokens = max_completion_length (HF generate masks "
            "the eos ids until then)",
            "media": "each row's images encoded again (prompt rows repeated G times)",
            "timing": "trainer.train() in a thread, one optimizer step per call",
        }

    def _train(self) -> None:
        try:
            self.trainer.train()
            self.gate.done.put(RuntimeError("trl training stopped"))
        except BaseException as e:  # handed to the caller of call()
            self.gate.done.put(e)

    def _instrument(self) -> None:
        """Timers around the trainer's methods (instance attributes shadow the class's)."""
        tr, t, torch = self.trainer, self.timers, self.torch
        tr._generate_single_turn = t.wrap(tr._generate_single_turn, "generation")
        tr._get_per_token_logps_and_entropies = t.wrap(
            tr._get_per_token_logps_and_entropies,
            lambda: "logps in loss" if torch.is_grad_enabled() else "ref log-probs",
        )
        tr._prepare_inputs = t.wrap(tr._prepare_inputs, "prepare_inputs")
        tr.compute_loss = t.wrap(tr.compute_loss, "loss forward")
        tr.training_step = t.wrap(tr.training_step, "training_step")
        score = tr._generate_and_score_completions

        def scored(inputs):
            out = score(inputs)
            ids, keep = out["prompt_ids"], out["prompt_mask"].bool()
            self.last = {
                "completion_tokens": int(out["completion_mask"].sum()),
                "prompts": [row[k].tolist() for row, k in zip(ids, keep, strict=True)],
                "padded_length": int(ids.shape[1] + out["completion_ids"].shape[1]),
            }
            return out

        tr._generate_and_score_completions = scored

    def call(self) -> dict:
        self.timers.reset()
        t0 = time.perf_counter()
        self.gate.go.release()
        err = self.gate.done.get()
        total = time.perf_counter() - t0
        if err is not None:
            raise err
        sec = self.timers.seconds
        gen, ref = sec["generation"], sec["ref log-probs"]
        prep, loss, step = sec["prepare_inputs"], sec["loss forward"], sec["training_step"]
        prompts = self.last["prompts"]
        g = self.settings.num_generations
        self.extra.update(
            prompt_digest=gw.prompt_digest(prompts),
            prompt_tokens=sorted(len(p) for p in prompts[::g]),
            padded_length=self.last["padded_length"],
        )
        return {
            "generation": gen,
            "rewards + host prep": prep - gen - ref,
            "ref log-probs": ref,
            "loss forward": loss,
            "backward": step - prep - loss,
            "clip + AdamW + loop": total - step,
            "completion_tokens": self.last["completion_tokens"],
        }

    def info(self) -> dict:
        import transformers
        import trl

        return {
            **self.extra,
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": self.torch.__version__,
            "threads": self.torch.get_num_threads(),
            "threads_in_training_thread": self.gate.threads,
        }

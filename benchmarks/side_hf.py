"""The transformers side: what TRL and EasyR1 run, i.e. Qwen2_5_VLForConditionalGeneration in
PyTorch (eager or sdpa attention), a plain training step (forward with labels, backward, gradient
clipping, AdamW) with the vision tower frozen, the forward, and ``generate``; plus the matmul
peak of numpy, jax and torch."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from benchmarks import workload as wl


def _torch():
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


class HF:
    """One task on the transformers side with one attention implementation."""

    def __init__(self, task: str, model_dir: str, shape: wl.Shape, attn: str):
        torch = self.torch = _torch()
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.shape, self.attn = shape, attn
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn
        )
        self.extra: dict = {"attn_implementation": attn}
        self.call: Callable[[], dict | None] = getattr(self, f"_setup_{task}")()

    def _tensors(self, batch: dict) -> dict:
        return {k: self.torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}

    def _setup_sft(self):
        torch, model = self.torch, self.model
        model.train()
        for p in model.model.visual.parameters():
            p.requires_grad_(False)  # frozen vision tower and merger, as the project default
        params = [p for p in model.parameters() if p.requires_grad]
        kw = dict(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        try:
            opt = torch.optim.AdamW(params, fused=True, **kw)
            self.extra["optimizer"] = "torch.optim.AdamW(fused=True)"
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(params, foreach=True, **kw)
            self.extra["optimizer"] = "torch.optim.AdamW(foreach=True)"
        self.extra["trainable_params"] = sum(p.numel() for p in params)
        batch = self._tensors(wl.hf_batch(self.shape, wl.sft_examples(self.shape), labels=True))

        def call():
            t0 = time.perf_counter()
            loss = model(**batch, use_cache=False).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            return {"loss": float(loss), "forward+loss": t1 - t0, "backward": t2 - t1,
                    "clip + AdamW": t3 - t2}  # fmt: skip

        return call

    def _setup_forward(self):
        torch, model = self.torch, self.model
        model.eval()
        batch = self._tensors(wl.hf_batch(self.shape, wl.sft_examples(self.shape), labels=False))

        def call():
            with torch.inference_mode():
                model(**batch, use_cache=False)

        return call

    def _setup_sample(self):
        torch, model = self.torch, self.model
        model.eval()
        prompt = self._tensors(wl.sampling_prompt(self.shape))
        s = self.shape
        pad = model.config.text_config.bos_token_id

        def call():
            model.model.rope_deltas = None
            with torch.inference_mode():
                out = model.generate(
                    **prompt,
                    do_sample=True,
                    num_return_sequences=s.samples,
                    max_new_tokens=s.new_tokens,
                    min_new_tokens=s.new_tokens,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    pad_token_id=pad,
                )
            return {"new_tokens": int(out.shape[0] * (out.shape[1] - s.prompt))}

        return call

    def info(self) -> dict:
        import transformers

        return {
            **self.extra,
            "transformers": transformers.__version__,
            "torch": self.torch.__version__,
            "threads": self.torch.get_num_threads(),
        }


class Matmul:
    """One n x n fp32 matmul per call in numpy, jax or torch."""

    def __init__(self, lib: str, n: int):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), np.float32)
        b = rng.standard_normal((n, n), np.float32)
        self.extra = {"lib": lib, "n": n, "flops_per_call": 2.0 * n**3}
        if lib == "numpy":
            fn = lambda: np.dot(a, b)  # noqa: E731
        elif lib == "jax":
            import jax
            import jax.numpy as jnp

            f = jax.jit(jnp.matmul)
            ja, jb = jnp.asarray(a), jnp.asarray(b)
            fn = lambda: f(ja, jb).block_until_ready()  # noqa: E731
        else:
            torch = _torch()
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fn = lambda: torch.mm(ta, tb)  # noqa: E731

        def call() -> None:
            fn()

        self.call = call

    def info(self) -> dict:
        return self.extra

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


class DecodeFloor:
    """Floors of one decoding step, with the checkpoint's own weights: per call, ``new_tokens``
    steps that push ``samples`` rows through every decoder weight matmul (q, k, v, o, gate, up,
    down) and the LM head, and nothing else (no attention, norms, RoPE or sampling).

    ``lib``: "torch"; "jax" (a jitted fori_loop, weights [in, out]); "jax_out_in" (the LM head,
    gate and up [out, in], as ``urt_jax.generate.sample`` decodes on the CPU); the fastest of
    these is the floor of a sampler built on these libraries' matmuls. "jax_read" only reads
    every weight once a step (a multiply-sum over it): the memory's own floor, which the matmul
    kernels at a few rows do not reach."""

    NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip
    WIDE = ("mlp.gate_proj", "mlp.up_proj")  # the ones the sampler transposes (out > in)

    def __init__(self, lib: str, model_dir: str, shape: wl.Shape):
        import glob

        from safetensors.numpy import load_file

        tensors: dict[str, np.ndarray] = {}
        for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
            tensors.update(load_file(path))
        prefix = next(k for k in tensors if k.endswith("layers.0.mlp.up_proj.weight"))
        prefix = prefix[: -len("0.mlp.up_proj.weight")]
        out_in = lib == "jax_out_in"

        def layout(w: np.ndarray, wide: bool) -> np.ndarray:  # w: torch's [out, in]
            return np.ascontiguousarray(w if out_in and wide else w.T)

        layers = [
            [layout(tensors[f"{prefix}{i}.{n}.weight"], n in self.WIDE) for n in self.NAMES]
            for i in range(shape.layers)
        ]
        head = layout(tensors["lm_head.weight"], True)
        rows, steps, width = shape.samples, shape.new_tokens, shape.hidden
        self.extra = {"lib": lib, "rows": rows, "steps_per_call": steps,
                      "weight_bytes_per_step": int(sum(w.nbytes for ws in layers for w in ws)
                                                   + head.nbytes)}  # fmt: skip
        x0 = np.full((rows, width), 0.01, np.float32)
        if lib.startswith("jax"):
            import jax
            import jax.numpy as jnp

            def mm(x, w):  # a WIDE weight or the head: [out, in] multiply as in urt_jax's Dense
                return jnp.einsum("...i,oi->...o", x, w) if out_in else x @ w

            def one(x, weights, head):
                if lib == "jax_read":  # each weight read once; the carry keeps it in the loop
                    c = jnp.mean(x)
                    total = sum(jnp.sum(w * c) for w in (*jax.tree.leaves(weights), head))
                    return x + total * 1e-30
                for q, k, v, o, g, u, d in weights:
                    a = (x @ q).at[:, : k.shape[1]].add(x @ k + x @ v)
                    x = x + a @ o
                    x = x + (jax.nn.silu(mm(x, g)) * mm(x, u)) @ d
                    x = x * 1e-3  # keeps the activations bounded over many steps
                return x + mm(x, head)[:, :width] * 1e-6

            @jax.jit
            def loop(x, w, h):
                return jax.lax.fori_loop(0, steps, lambda _, c: one(c, w, h), x)

            jw, jh, jx = jax.tree.map(jnp.asarray, (layers, head, x0))
            fn = lambda: loop(jx, jw, jh).block_until_ready()  # noqa: E731
        else:
            torch = _torch()
            tw = [[torch.from_numpy(w) for w in ws] for ws in layers]
            th, tx = torch.from_numpy(head), torch.from_numpy(x0)

            def fn():
                with torch.inference_mode():
                    x = tx
                    for _ in range(steps):
                        for q, k, v, o, g, u, d in tw:
                            a = x @ q
                            a[:, : k.shape[1]] += x @ k + x @ v
                            x = x + a @ o
                            x = x + (torch.nn.functional.silu(x @ g) * (x @ u)) @ d
                            x = x * 1e-3
                        x = x + (x @ th)[:, :width] * 1e-6

        def call() -> None:
            fn()

        self.call = call

    def info(self) -> dict:
        return self.extra

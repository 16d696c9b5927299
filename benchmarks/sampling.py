"""New tokens per second of urt_jax.generate.sample with G samples per prompt against
transformers' generate(num_return_sequences=G, do_sample=True), same model, prompt and lengths.

    python benchmarks/sampling.py [--samples 8] [--new-tokens 64] [--repeats 3]

Both sides sample exactly --new-tokens tokens per row (no early stop), after one warm-up call
(which includes XLA compilation on our side); medians of --repeats timed calls are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import torch

    import urt_jax
    from tests import hf_reference as ref
    from urt_jax.generate import sample

    torch.set_num_threads(os.cpu_count() or 1)
    heads = max(4, args.hidden // 64)
    config = ref.tiny_config(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        mrope_section=_sections(args.hidden // heads),
    )
    hf = ref.make_model(config, seed=0)
    hf.config._attn_implementation = "sdpa"
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_model(hf, tmp)
        ours = urt_jax.from_pretrained(tmp, dtype="float32")
    batch = ref.build_batch([[("text", 24), ("image", (16, 16)), ("text", 40)]], seed=0)
    g, n = args.samples, args.new_tokens

    def run_hf():
        t = {k: torch.from_numpy(v) for k, v in batch.items()}
        with torch.no_grad():
            hf.generate(
                **t,
                do_sample=True,
                num_return_sequences=g,
                max_new_tokens=n,
                min_new_tokens=n,
                top_p=1.0,
                top_k=0,
                pad_token_id=ref.PAD_ID,
            )

    def run_ours(seed=0):
        sample(
            ours,
            batch,
            num_samples=g,
            max_new_tokens=n,
            temperature=1.0,
            seed=seed,
            eos_token_ids=[],
        )

    results = {}
    for name, fn in (("transformers", run_hf), ("urt_jax", run_ours)):
        t0 = time.perf_counter()
        fn()
        warmup = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        results[name] = {
            "warmup_s": round(warmup, 3),
            "median_s": round(med, 4),
            "new_tokens_per_s": round(g * n / med, 1),
        }
    results["sampling_speedup_vs_hf"] = round(
        results["urt_jax"]["new_tokens_per_s"] / results["transformers"]["new_tokens_per_s"], 2
    )
    results["setup"] = {
        "samples": g,
        "new_tokens": n,
        "hidden": args.hidden,
        "layers": args.layers,
        "prompt_tokens": int(batch["input_ids"].shape[1]),
        "image_patches": 256,
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(results, indent=2))


def _sections(head_dim: int) -> tuple[int, int, int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return (t, h, half - t - h)


if __name__ == "__main__":
    main()

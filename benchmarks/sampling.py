"""New tokens per second of urt_jax.generate.sample with G samples per prompt against
transformers' generate(num_return_sequences=G, do_sample=True): the sampling part of
benchmarks/run.py, on its own.

    python benchmarks/sampling.py --out DIR [--quick] [--rounds N]

Same as ``python benchmarks/run.py --out DIR --only sampling``: the shared 60M shape (1 prompt
with a 224x224 image x 8 samples x 128 new tokens, no early stop), each side in its own
process, alternating turns, medians after warm-up (which includes XLA compilation on our side).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["--only", "sampling"]
    run.main()

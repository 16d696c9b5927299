"""The median-of-repeats timing loop the benchmark scripts share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()``, each call blocked until its result is ready, after one
    untimed warm-up call (which compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)

"""One side of one measurement, in its own process (so that its peak memory is its own), driven
by benchmarks/run.py over stdin/stdout, one JSON object a line.

    python benchmarks/worker.py --task sft|forward|sample|recompiles|grpo|matmul|decode_floor
        --side ours|hf|trl|lib --model DIR --shape default|quick [--attn sdpa|eager]
        [--lib numpy|jax|torch|jax_out_in|jax_read (decode_floor)]

Commands: {"op": "run", "n": k} runs k timed calls; {"op": "reset_peak"} restarts peak-memory
tracking; {"op": "memory"} reports it; {"op": "breakdown"} (urt_jax only) times the SFT step's
pieces or profiles a sampling call (benchmarks/decode_profile.py); {"op": "trace", "dir": D}
writes a jax.profiler trace of two steps; {"op": "finish"} reports memory and details and exits.
"base" is the resident set once the side's libraries are imported (before the model is loaded).
Memory is the process's resident set (Linux /proc): VmHWM, reset by writing 5 to
/proc/self/clear_refs (falling back to ru_maxrss, which cannot be reset, where that is not
allowed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 1024 * 1024


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> int:
    return _status("VmRSS") or 0


def peak_rss() -> int:
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resolve(args: argparse.Namespace):
    """Imports the side's libraries (so that the base memory includes them) and returns a
    constructor of the side."""
    from benchmarks import workload as wl

    shape = wl.SHAPES_BY_NAME[args.shape]
    if args.side == "ours":
        import jax

        from benchmarks.side_ours import Ours

        jax.devices()  # backend start-up counts as library overhead, not as the model's
        return lambda: Ours(args.task, args.model, shape)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    if args.side == "trl":
        import trl  # noqa: F401

        from benchmarks.side_trl import TRLGRPO

        return lambda: TRLGRPO(args.task, args.model, shape)
    from benchmarks.side_hf import HF, DecodeFloor, Matmul

    if args.side == "hf":
        return lambda: HF(args.task, args.model, shape, args.attn)
    if args.lib.startswith("jax"):
        import jax

        jax.devices()
    if args.task == "decode_floor":
        return lambda: DecodeFloor(args.lib, args.model, shape)
    return lambda: Matmul(args.lib, args.n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--side", required=True, choices=("ours", "hf", "trl", "lib"))
    ap.add_argument("--model", default="")
    ap.add_argument("--shape", default="default")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--lib", default="numpy")
    ap.add_argument("--n", type=int, default=2048)
    args = ap.parse_args()

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the protocol
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    make = resolve(args)
    base = rss()
    t0 = time.perf_counter()
    side = make()
    setup_s = time.perf_counter() - t0
    reply({"ready": True, "setup_s": setup_s, "rss_base": base, "rss": rss(), "info": side.info()})
    resettable = False
    at_reset = rss()

    def memory() -> dict:
        peak = peak_rss()
        return {
            "rss_base": base,
            "rss_at_reset": at_reset,
            "peak_rss": peak,
            "peak_since_reset": resettable,
            "peak_minus_base_mib": (peak - base) / MIB,
            "peak_rss_mib": peak / MIB,
        }

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "run":
            times, extras = [], []
            for _ in range(int(cmd.get("n", 1))):
                t = time.perf_counter()
                extra = side.call()
                times.append(time.perf_counter() - t)
                extras.append(extra or {})
            reply({"times": times, "extras": extras})
        elif op == "reset_peak":
            resettable = reset_peak()
            at_reset = rss()
            reply({"resettable": resettable, "rss": at_reset})
        elif op == "memory":
            reply(memory())
        elif op == "breakdown":
            reply(side.breakdown())
        elif op == "trace":
            reply(side.trace(cmd["dir"]))
        elif op == "finish":
            reply({**memory(), "info": side.info()})
            return


if __name__ == "__main__":
    main()

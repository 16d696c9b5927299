"""urt-jax against transformers on this machine, in one run, and the 7B plan on paper.

    python benchmarks/run.py --out DIR [--quick] [--skip-7b] [--only sft,forward,...]

Writes DIR/results.json and DIR/results.md (the table for the README). One shared random
checkpoint (a transformers Qwen2.5-VL saved once, DIR/model) is loaded by every side, fp32, and
every side builds the same batches (benchmarks/workload.py). Each side of each measurement runs
in its own worker process (benchmarks/worker.py) so its peak memory is its own; the sides take
turns (round-robin, rotating who goes first) and the medians of the timed calls after warm-up
are compared. Measurements: matmul peak (numpy, jax, torch), SFT step, forward, group sampling,
recompilations over mixed-length batches, a whole GRPO step against TRL's GRPOTrainer, the SFT
step breakdown, a profile of a sampling call, and benchmarks/plan_7b.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import workload as wl  # noqa: E402
from benchmarks.flops import FORMULA, step_flops  # noqa: E402
from benchmarks.report import write_markdown  # noqa: E402
from urt_jax import hugepages  # noqa: E402

WORKER = os.path.join(ROOT, "benchmarks", "worker.py")
MEASUREMENTS = ("matmul", "sft", "forward", "sampling", "recompiles", "grpo", "plan")
GOALS = {
    "sft_step_speedup_vs_hf": (">=", 1.2),
    "forward_speedup_vs_hf": None,
    "sampling_speedup_vs_hf": (">=", 3.0),
    "mfu_vs_measured_peak": (">=", 0.5),
    "recompiles_after_warmup": ("==", 0),
    "grpo_step_speedup_vs_trl": (">=", 3.0),
    "sampling_speedup_bound_vs_hf": None,
    "sampling_speedup_memory_bound_vs_hf": None,
}
# transformers' sides: attention implementation, and whether its process gets the huge-page malloc
# tunable that urt-jax's command line sets for itself (urt_jax.hugepages); the fastest counts.
HF_SIDES = {
    "transformers (sdpa)": ("sdpa", False),
    "transformers (eager)": ("eager", False),
    "transformers (sdpa, huge pages)": ("sdpa", True),
}
# TRL's GRPOTrainer (benchmarks/side_trl.py) runs in one process with the same malloc settings as
# urt_jax's (a TRL step takes about two minutes at the default shape on 2 cores: one TRL side
# keeps the run short); --malloc plain runs both without the tunable.
TRL_SIDE = "trl"
# --malloc retain: glibc malloc told to keep freed memory (one arena, no mmap, no trimming), the
# same for every side. By default each step's large temporaries (XLA's 1.4 GB temp buffer, torch's
# activations) are mmapped afresh and page-faulted in again: about 350k faults a step on both
# sides here, more after the other side's turn (this VM hands freed pages back to its host).
# Retained, the memory figures (peak RSS) count the retained heap, and the single arena slows
# jax's sampling (its thread pool's allocations contend), so it is an option, not the default.
RETAIN_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}


def hugepage_env() -> dict[str, str]:
    """What urt-jax's command line adds to its own environment on this machine (maybe nothing)."""
    env = hugepages.restart_env(os.environ)
    return {} if env is None else {"GLIBC_TUNABLES": env["GLIBC_TUNABLES"]}


def worker_env(args: argparse.Namespace, side: str) -> dict[str, str]:
    """Environment added to one side's process (--malloc): by default urt_jax runs as its
    command line does, and transformers both as it is and with the same tunable."""
    if args.malloc == "retain":
        return RETAIN_MALLOC
    if args.malloc == "plain":
        return {}
    if side in ("urt_jax", TRL_SIDE) or HF_SIDES.get(side, ("", False))[1]:
        return hugepage_env()
    return {}


class Worker:
    """A worker process; ``ask`` sends one command and returns its JSON reply."""

    def __init__(self, name: str, argv: list[str], log_dir: str, env: dict[str, str]):
        self.name = name
        self.log = os.path.join(log_dir, name.replace(" ", "_").replace("(", "").replace(")", ""))
        self.log += ".log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, WORKER, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=ROOT,
                env={**os.environ, **env},
            )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            code = self.proc.returncode
            raise RuntimeError(f"worker {self.name} exited ({code}); see {self.log}")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> dict:
        out = self.ask(op="finish")
        self.proc.wait(timeout=60)
        return out


def compare(
    task: str,
    sides: dict[str, list[str]],
    args: argparse.Namespace,
    units_per_call: float,
    warmup: int,
    breakdown: str | None = None,
    keep_extras: bool = False,
) -> dict:
    """Round-robin timing of ``sides`` (name -> worker argv) on one task; ``keep_extras``: each
    side's result lists what its timed calls returned (``extras``)."""
    log_dir = os.path.join(args.out, "logs", task)
    os.makedirs(log_dir, exist_ok=True)
    workers = {
        name: Worker(name, argv, log_dir, worker_env(args, name)) for name, argv in sides.items()
    }
    res: dict = {name: {"setup_s": w.ready["setup_s"]} for name, w in workers.items()}
    for name, w in workers.items():
        res[name]["warmup_s"] = w.ask(op="run", n=warmup)["times"]
        w.ask(op="reset_peak")
    names = list(workers)
    times: dict[str, list[float]] = {n: [] for n in names}
    rewarm: dict[str, list[float]] = {n: [] for n in names}
    extras: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if args.rewarm:  # the turn's first calls, not timed (see --rewarm)
                rewarm[name] += workers[name].ask(op="run", n=args.rewarm)["times"]
            out = workers[name].ask(op="run", n=args.steps)
            times[name] += out["times"]
            extras[name] += out["extras"]
            time.sleep(args.pause)
    for name, w in workers.items():
        med = statistics.median(times[name])
        res[name].update(
            rewarm_s=rewarm[name],
            times_s=times[name],
            median_s=med,
            spread=(max(times[name]) - min(times[name])) / med,
            per_s=units_per_call / med,
        )
        phases = sorted(
            {k for e in extras[name] for k, v in e.items() if isinstance(v, float) and k != "loss"}
        )
        if phases:
            res[name]["phases_s"] = {
                k: statistics.median(e[k] for e in extras[name] if k in e) for k in phases
            }
        if keep_extras:
            res[name]["extras"] = extras[name]
        if name != breakdown:
            res[name].update(w.finish())
            continue
        memory = w.ask(op="memory")  # before the breakdown's extra programs
        res[name]["breakdown"] = w.ask(op="breakdown")
        if args.trace:
            res[name]["trace"] = w.ask(op="trace", dir=os.path.join(args.out, "trace"))
        res[name].update({**w.finish(), **memory})
    return res


def best_hf(res: dict) -> str:
    return max((n for n in res if n in HF_SIDES), key=lambda n: res[n]["per_s"])


def side_args(task: str, args: argparse.Namespace, hf: bool = True) -> dict[str, list[str]]:
    common = ["--task", task, "--model", args.model_dir, "--shape", args.shape]
    sides = {"urt_jax": [*common, "--side", "ours"]}
    if hf:
        for name, (attn, huge) in HF_SIDES.items():
            if huge and (args.malloc != "default" or not hugepage_env()):
                continue  # the same process as the plain side's
            sides[name] = [*common, "--side", "hf", "--attn", attn]
    return sides


def machine() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def run_plan(args: argparse.Namespace) -> dict:
    out = os.path.join(args.out, "plan_7b.json")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "plan_7b.py"), "--out", out]
    cmd += ["--quick"] if args.quick else []
    cmd += args.plan_args.split() if args.plan_args else []
    log = os.path.join(args.out, "logs", "plan_7b.log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0 and not os.path.exists(out):
        return {"error": f"plan_7b.py exited with {rc}; see {log}"}
    with open(out) as f:
        plan = json.load(f)
    plan["wall_s"] = time.perf_counter() - t0
    plan["returncode"] = rc  # non-zero: a partial plan (the meshes written before the failure)
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few repeats")
    ap.add_argument("--skip-7b", action="store_true")
    ap.add_argument("--only", default=",".join(MEASUREMENTS))
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 2)")
    ap.add_argument("--steps", type=int, default=2, help="timed calls per side per round")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between turns")
    ap.add_argument(
        "--rewarm",
        type=int,
        default=1,
        help="untimed calls that open each turn: a process that sat idle while another side ran "
        "first faults its freed memory back in (this VM returns freed pages to its host; a cold "
        "SFT step here took up to 1.3 s longer for urt_jax and 0.5 s for torch), and a training "
        "run never alternates with another process (0 times every call)",
    )
    ap.add_argument("--plan-args", default="", help="extra arguments for plan_7b.py")
    ap.add_argument("--trace", action="store_true", help="jax.profiler trace of 2 SFT steps")
    ap.add_argument(
        "--malloc",
        choices=("default", "plain", "retain"),
        default="default",
        help="glibc malloc settings of the sides' processes: default, urt_jax with the huge-page "
        "tunable its command line sets (urt_jax.hugepages) and transformers with and without it; "
        "plain, every side as inherited; retain, every side with RETAIN_MALLOC",
    )
    args = ap.parse_args()
    args.shape = "quick" if args.quick else "default"
    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.quick:
        args.steps = min(args.steps, 1)
    only = set(args.only.split(","))
    if args.skip_7b:
        only.discard("plan")
    shape = wl.SHAPES_BY_NAME[args.shape]
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    args.model_dir = os.path.join(args.out, "model")
    t_start = time.perf_counter()
    results: dict = {
        "machine": {**machine(), "loadavg_start": os.getloadavg()},
        "shape": {k: v for k, v in vars(shape).items()},
        "method": {
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "pause_s": args.pause,
            "rewarm_calls_per_turn": args.rewarm,
            "malloc": args.malloc,
            "worker_env": {
                name: env for name in side_args("sft", args) if (env := worker_env(args, name))
            },
        },
        "flops_formula": FORMULA,
        "goals": {k: list(v) if v else None for k, v in GOALS.items()},
    }
    results["params"] = wl.save_checkpoint(shape, args.model_dir)
    from urt_jax.model.config import Qwen25VLConfig

    config = Qwen25VLConfig.from_hf_file(args.model_dir)
    grid = (1, shape.image // 14, shape.image // 14)
    tokens = shape.batch * shape.seq
    sft_flops = step_flops(
        config, shape.seq, tokens, shape.batch * shape.reply, [grid] * shape.batch, True
    )
    fwd_flops = step_flops(config, shape.seq, tokens, tokens, [grid] * shape.batch, False)
    results["model_flops"] = {"sft_step": sft_flops, "forward": fwd_flops}
    metrics: dict = {}

    def stage(name: str) -> bool:
        if name in only:
            print(f"[bench] {name} ({time.perf_counter() - t_start:.0f}s)", file=sys.stderr)
            results.setdefault("loadavg", {})[name] = os.getloadavg()
        return name in only

    if stage("matmul"):
        n = 512 if args.quick else 2048
        sides = {lib: ["--task", "matmul", "--side", "lib", "--lib", lib, "--n", str(n)]
                 for lib in ("numpy", "jax", "torch")}  # fmt: skip
        res = compare("matmul", sides, args, 2.0 * n**3 / 1e9, warmup=2)
        res["peak_gflops"] = max(res[k]["per_s"] for k in sides)
        results["matmul"] = res
    if stage("sft"):
        res = compare("sft", side_args("sft", args), args, tokens, warmup=2, breakdown="urt_jax")
        hf = best_hf(res)
        res["hf_best"] = hf
        metrics["sft_step_speedup_vs_hf"] = res["urt_jax"]["per_s"] / res[hf]["per_s"]
        for name in ("urt_jax", hf):
            res[name]["model_gflops_per_s"] = sft_flops / res[name]["median_s"] / 1e9
        if "matmul" in results:
            peak = results["matmul"]["peak_gflops"]
            metrics["mfu_vs_measured_peak"] = res["urt_jax"]["model_gflops_per_s"] / peak
            res[hf]["mfu_vs_measured_peak"] = res[hf]["model_gflops_per_s"] / peak
        results["sft"] = res
    if stage("forward"):
        res = compare("forward", side_args("forward", args), args, tokens, warmup=2)
        res["hf_best"] = hf = best_hf(res)
        metrics["forward_speedup_vs_hf"] = res["urt_jax"]["per_s"] / res[hf]["per_s"]
        results["forward"] = res
    if stage("sampling"):
        new = shape.samples * shape.new_tokens
        res = compare("sample", side_args("sample", args), args, new, warmup=1, breakdown="urt_jax")
        res["hf_best"] = hf = best_hf(res)
        metrics["sampling_speedup_vs_hf"] = res["urt_jax"]["per_s"] / res[hf]["per_s"]
        floor = decode_floor(args, new)
        res["decode_floor"] = floor
        # no sampler on these matmul kernels decodes faster than its weights go through them
        metrics["sampling_speedup_bound_vs_hf"] = res[hf]["median_s"] / floor["median_s"]
        # nor any sampler faster than the memory delivers the weights
        metrics["sampling_speedup_memory_bound_vs_hf"] = (
            res[hf]["median_s"] / floor["read_median_s"]
        )
        results["sampling"] = res
    if stage("recompiles"):
        results["recompiles"] = res = recompiles(args)
        metrics["recompiles_after_warmup"] = res["compiles_after_warmup"]
    if stage("grpo"):
        results["grpo"] = res = grpo(args, shape)
        metrics["grpo_step_speedup_vs_trl"] = res[TRL_SIDE]["median_s"] / res["urt_jax"]["median_s"]
    if stage("plan"):
        results["plan_7b"] = run_plan(args)
    results["metrics"] = metrics
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(write_markdown(results))
    print(f"[bench] wrote {args.out}/results.json and results.md", file=sys.stderr)


def decode_floor(args: argparse.Namespace, new_tokens: int) -> dict:
    """The decode floors (benchmarks/side_hf.DecodeFloor): the weight matmuls alone in torch, jax
    and jax with the sampler's [out, in] layout (the fastest counts), and reading the weights
    once a step (the memory's floor)."""
    common = ["--task", "decode_floor", "--side", "lib", "--model", args.model_dir]
    libs = ("jax", "jax_out_in", "torch", "jax_read")
    sides = {lib: [*common, "--shape", args.shape, "--lib", lib] for lib in libs}
    res = compare("decode_floor", sides, args, new_tokens, warmup=1)
    best = min(libs[:3], key=lambda lib: res[lib]["median_s"])
    steps = res[best]["info"]["steps_per_call"]
    return {
        "sides": res,
        "best": best,
        "median_s": res[best]["median_s"],
        "step_ms": 1e3 * res[best]["median_s"] / steps,
        "read_median_s": res["jax_read"]["median_s"],
        "read_step_ms": 1e3 * res["jax_read"]["median_s"] / steps,
        "weight_mib_per_step": res[best]["info"]["weight_bytes_per_step"] / 2**20,
    }


def grpo(args: argparse.Namespace, shape: wl.Shape) -> dict:
    """One GRPO step (rollout of prompts x G full-length completions, rewards, reference
    log-probs, one AdamW update) of urt_jax's GRPOTrainer and of TRL's, on the same checkpoint,
    tokenizer (saved with it here: benchmarks/grpo_workload.save_tokenizer) and prompts; and
    whether both sides did the same work."""
    from benchmarks import grpo_workload as gw

    gw.save_tokenizer(shape, args.model_dir)
    settings = gw.settings(shape)
    common = ["--task", "grpo", "--model", args.model_dir, "--shape", args.shape]
    sides = {"urt_jax": [*common, "--side", "ours"], TRL_SIDE: [*common, "--side", "trl"]}
    # One timed step a turn and no untimed re-warm step: a step takes minutes here (TRL's
    # several), against the second or so a cold turn's page faults cost.
    timing = argparse.Namespace(**{**vars(args), "steps": 1, "rewarm": 0})
    res = compare("grpo", sides, timing, settings.completion_tokens, warmup=1, keep_extras=True)
    res["settings"] = dataclasses.asdict(settings)
    res["method"] = {"rounds": args.rounds, "steps_per_turn": 1, "rewarm_calls_per_turn": 0}
    res["worker_env"] = {name: worker_env(args, name) for name in sides}
    for name in sides:
        calls, info = res[name]["extras"], res[name]["info"]
        res[name]["completion_tokens"] = sorted({e["completion_tokens"] for e in calls})
        res[name]["trainable_params"] = info["trainable_params"]
    ours, trl = res["urt_jax"], res[TRL_SIDE]
    res["same_work"] = {
        "completion_tokens_per_step": settings.completion_tokens,
        "completion_tokens_equal": ours["completion_tokens"]
        == trl["completion_tokens"]
        == [settings.completion_tokens],
        "trainable_params_equal": ours["trainable_params"] == trl["trainable_params"],
        "prompts_equal": ours["info"]["prompt_digest"] == trl["info"]["prompt_digest"],
    }
    return res


def recompiles(args: argparse.Namespace) -> dict:
    """30 SFT steps on mixed-length batches after a warm-up over their bucketed shapes."""
    log_dir = os.path.join(args.out, "logs", "recompiles")
    os.makedirs(log_dir, exist_ok=True)
    argv = side_args("recompiles", args, hf=False)["urt_jax"]
    w = Worker("urt_jax", argv, log_dir, worker_env(args, "urt_jax"))
    steps = w.ready["info"]["warmup_steps"]
    warm = w.ask(op="run", n=steps)
    timed = w.ask(op="run", n=30)
    done = w.finish()
    return {
        "warmup_steps": steps,
        "warmup_compiles": sum(e["compiles"] for e in warm["extras"]),
        "warmup_s": sum(warm["times"]),
        "steps": 30,
        "compiles_after_warmup": sum(e["compiles"] for e in timed["extras"]),
        "steps_s": timed["times"],
        "info": done["info"],
    }


if __name__ == "__main__":
    main()

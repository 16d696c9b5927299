"""results.json -> results.md: the README table, the details, the profile and the 7B plan."""

from __future__ import annotations

GIB = 1024**3
TRL = "trl"  # the TRL side's name (benchmarks/run.py, TRL_SIDE)
# the GRPO step's phases in the order a step runs them (either side's; others follow)
GRPO_PHASES = ("generation", "rewards + host prep", "ref log-probs", "loss forward", "backward",
               "clip + AdamW + loop", "update (loss + backward + AdamW)")  # fmt: skip


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _goal(name: str, value: float | None, goals: dict) -> tuple[str, str]:
    goal = goals.get(name)
    if goal is None or value is None:
        return "-", "-"
    op, target = goal
    met = value >= target if op == ">=" else value == target
    shown = f"{op} {target:g}" + ("x" if "speedup" in name else "")
    if name.startswith("mfu"):
        shown = f">= {target:.0%}"
    return shown, "yes" if met else "**no**"


def _load(avg) -> str:
    return "n/a" if not avg else "/".join(f"{x:.1f}" for x in avg)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def summary(r: dict) -> list[str]:
    m, goals = r.get("metrics", {}), r["goals"]
    out = [
        _row(["metric", "urt_jax", "transformers (best)", "ratio", "goal", "met"]),
        _row(["---"] * 6),
    ]
    for key, label, unit, metric in (
        ("sft", "SFT step (forward, backward, AdamW)", "tokens/s", "sft_step_speedup_vs_hf"),
        ("forward", "Forward", "tokens/s", "forward_speedup_vs_hf"),
        ("sampling", "Sampling, G = 8", "new tokens/s", "sampling_speedup_vs_hf"),
    ):
        if key not in r:
            continue
        res, hf = r[key], r[key]["hf_best"]
        goal, met = _goal(metric, m.get(metric), goals)
        out.append(
            _row(
                [
                    f"{label}, {unit}",
                    _f(res["urt_jax"]["per_s"]),
                    f"{_f(res[hf]['per_s'])} ({hf.split('(')[-1].rstrip(')')})",
                    f"**{m[metric]:.2f}x**",
                    goal,
                    met,
                ]
            )
        )
    if "sampling_speedup_bound_vs_hf" in m:
        fl, hf = r["sampling"]["decode_floor"], r["sampling"]["hf_best"]
        steps = r["shape"]["new_tokens"]
        out.append(
            _row(
                [
                    f"Sampling floor: weight matmuls alone ({fl['weight_mib_per_step']:.0f} MiB "
                    f"per step, fastest of torch, jax, jax [out, in]: {fl['best']}), ms per step "
                    "(call / new tokens)",
                    _f(1e3 * r["sampling"]["urt_jax"]["median_s"] / steps, 2)
                    + f" (floor {fl['step_ms']:.2f})",
                    _f(1e3 * r["sampling"][hf]["median_s"] / steps, 2),
                    f"bound {m['sampling_speedup_bound_vs_hf']:.2f}x",
                    "-",
                    "-",
                ]
            )
        )
    if "sampling_speedup_memory_bound_vs_hf" in m:
        fl = r["sampling"]["decode_floor"]
        out.append(
            _row(
                [
                    "Sampling floor: reading every weight once (jax multiply-sum), ms per step",
                    f"(floor {fl['read_step_ms']:.2f})",
                    "-",
                    f"bound {m['sampling_speedup_memory_bound_vs_hf']:.2f}x",
                    "-",
                    "-",
                ]
            )
        )
    if "mfu_vs_measured_peak" in m:
        s, hf = r["sft"], r["sft"]["hf_best"]
        peak = r["matmul"]["peak_gflops"]
        goal, met = _goal("mfu_vs_measured_peak", m["mfu_vs_measured_peak"], goals)
        out.append(
            _row(
                [
                    f"SFT step MFU vs measured matmul peak ({peak:.0f} GFLOP/s)",
                    f"{m['mfu_vs_measured_peak']:.1%} ({s['urt_jax']['model_gflops_per_s']:.1f})",
                    f"{s[hf]['mfu_vs_measured_peak']:.1%} ({s[hf]['model_gflops_per_s']:.1f})",
                    "-",
                    goal,
                    met,
                ]
            )
        )
    if "grpo_step_speedup_vs_trl" in m:
        g = r["grpo"]
        goal, met = _goal("grpo_step_speedup_vs_trl", m["grpo_step_speedup_vs_trl"], goals)
        out.append(
            _row(
                [
                    f"GRPO step (rollout + update, {g['settings']['prompts']} prompts x G = "
                    f"{g['settings']['num_generations']}) vs TRL GRPOTrainer, s per step",
                    _f(g["urt_jax"]["median_s"], 2),
                    f"{_f(g[TRL]['median_s'], 2)} (TRL)",
                    f"**{m['grpo_step_speedup_vs_trl']:.2f}x**",
                    goal,
                    met,
                ]
            )
        )
    if "recompiles_after_warmup" in m:
        goal, met = _goal("recompiles_after_warmup", m["recompiles_after_warmup"], goals)
        rc = r["recompiles"]
        out.append(
            _row(
                [
                    f"Compilations in {rc['steps']} mixed-length SFT steps after warm-up",
                    str(m["recompiles_after_warmup"]),
                    "-",
                    "-",
                    goal,
                    met,
                ]
            )
        )
    for key, label in (("sft", "SFT"), ("forward", "forward"), ("sampling", "sampling")):
        if key in r:
            res, hf = r[key], r[key]["hf_best"]
            a, b = res["urt_jax"]["peak_minus_base_mib"], res[hf]["peak_minus_base_mib"]
            out.append(
                _row(
                    [
                        f"Peak memory, {label} (MiB over the libraries; whole process)",
                        f"{a:,.0f} ({res['urt_jax']['peak_rss_mib']:,.0f})",
                        f"{b:,.0f} ({res[hf]['peak_rss_mib']:,.0f})",
                        f"{a / b:.2f}x",
                        "-",
                        "-",
                    ]
                )
            )
    if "grpo" in r:
        g = r["grpo"]
        a, b = g["urt_jax"]["peak_minus_base_mib"], g[TRL]["peak_minus_base_mib"]
        out.append(
            _row(
                [
                    "Peak memory, GRPO step (MiB over the libraries; whole process)",
                    f"{a:,.0f} ({g['urt_jax']['peak_rss_mib']:,.0f})",
                    f"{b:,.0f} ({g[TRL]['peak_rss_mib']:,.0f}) (TRL)",
                    f"{a / b:.2f}x",
                    "-",
                    "-",
                ]
            )
        )
    for key, label in (("sft", "SFT step"), ("forward", "forward"), ("sampling", "sampling")):
        if key in r:
            res, hf = r[key], r[key]["hf_best"]
            out.append(
                _row(
                    [
                        f"First call (warm-up, incl. XLA compilation), {label}, s",
                        _f(res["urt_jax"]["warmup_s"][0], 2),
                        _f(res[hf]["warmup_s"][0], 2),
                        "-",
                        "-",
                        "-",
                    ]
                )
            )
    return out


def details(r: dict) -> list[str]:
    out = []
    for key, unit in (("sft", "tokens/s"), ("forward", "tokens/s"), ("sampling", "new tokens/s")):
        if key not in r:
            continue
        out += [f"\n### {key}\n", _row(["side", unit, "median s", "spread", "timed calls",
                                        "setup s", "warm-up s", "peak RSS MiB",
                                        "over libraries MiB"]), _row(["---"] * 9)]  # fmt: skip
        for name, s in r[key].items():
            if not isinstance(s, dict) or "per_s" not in s:
                continue
            out.append(
                _row(
                    [
                        name,
                        _f(s["per_s"]),
                        _f(s["median_s"], 3),
                        f"{s['spread']:.0%}",
                        str(len(s["times_s"])),
                        _f(s["setup_s"]),
                        " / ".join(_f(t, 2) for t in s["warmup_s"]),
                        _f(s["peak_rss_mib"], 0),
                        _f(s["peak_minus_base_mib"], 0),
                    ]
                )
            )
    if "matmul" in r:
        mm = r["matmul"]
        out += ["\n### matmul peak (fp32, n x n)\n", _row(["library", "GFLOP/s", "median s"])]
        out.append(_row(["---"] * 3))
        for lib in ("numpy", "jax", "torch"):
            out.append(_row([lib, _f(mm[lib]["per_s"]), _f(mm[lib]["median_s"], 4)]))
    return out


def profile(r: dict) -> list[str]:
    if "sft" not in r or "breakdown" not in r["sft"].get("urt_jax", {}):
        return []
    s = r["sft"]
    b = s["urt_jax"]["breakdown"]
    step = s["urt_jax"]["median_s"]
    out = [
        "\n## Where the time goes (SFT step)\n",
        "urt_jax: each piece jitted and timed on its own (medians; pieces nest, e.g. "
        "forward + backward includes the forward). With one micro-batch, trainer.step runs "
        "forward, backward, clipping and AdamW as one program (no gradient accumulator), so "
        "the pieces can add up to more than the step.\n",
        _row(["piece", "s", "share of the step"]),
        _row(["---"] * 3),
    ]
    for name, sec in b["seconds"].items():
        out.append(_row([name, _f(sec, 3), f"{sec / step:.0%}"]))
    out.append(_row(["whole step (trainer.step)", _f(step, 3), "100%"]))
    model = r["model_flops"]["sft_step"]
    xla = b.get("xla_flops_forward_backward", 0.0)
    out.append(
        f"\nModel FLOPs of the step (formula): {model / 1e9:,.1f} GFLOP; XLA's cost analysis of "
        f"the forward+backward program: {xla / 1e9:,.1f} GFLOP.\n"
    )
    fb = b["seconds"].get("forward + backward (accumulate)")
    opt = b["seconds"].get("clip + AdamW (apply)")
    if fb and "matmul" in r:
        rate = model / fb / 1e9
        out.append(
            f"Forward + backward alone: {rate:,.1f} GFLOP/s of model FLOPs, "
            f"{rate / r['matmul']['peak_gflops']:.0%} of the measured matmul peak; "
            f"clip + AdamW on its own: {opt / step:.0%} of the step.\n"
        )
    hf = s["hf_best"]
    if "phases_s" in s[hf]:
        out += [f"{hf}, phases of the same step (medians):\n", _row(["phase", "s"])]
        out.append(_row(["---"] * 2))
        for k, v in s[hf]["phases_s"].items():
            if k != "loss":
                out.append(_row([k, _f(v, 3)]))
    return out


def sampling_profile(r: dict) -> list[str]:
    sampling = r.get("sampling", {})
    p = sampling.get("urt_jax", {}).get("breakdown")
    if not p:
        return []
    steps, step_ms = p["steps"], p["step_ms"]
    per_step = sum(step_ms.values())
    out = [
        "\n## Where the time goes (sampling)\n",
        "urt_jax: one sampling call traced with jax.profiler (benchmarks/decode_profile.py), its "
        "XLA:CPU thunks grouped by what their HLO instruction computes (from the compiled "
        "program); thunks that ran at the same time share their overlap. The traced call took "
        f"{p['call_s']:.3f} s: {1e3 * p['once_s']:.0f} ms once (vision tower, prefill, cache "
        f"set-up, kernel copies), {steps} decode steps of {per_step:.2f} ms, and "
        f"{1e3 * p['host_and_idle_s']:.0f} ms in no thunk of the program (the runtime's gaps "
        f"between thunks, host work, dispatch); {p['thunks_per_step']:.0f} thunks a step.\n",
        _row(["in each decode step", "ms", "share"]),
        _row(["---"] * 3),
    ]
    for group, ms in step_ms.items():
        out.append(_row([group, _f(ms, 2), f"{ms / per_step:.0%}"]))
    out.append(_row(["decode step", _f(per_step, 2), "100%"]))
    matmul_ms = step_ms["decoder weight matmuls"] + step_ms["LM head"]
    floor = sampling.get("decode_floor")
    hf = sampling.get("hf_best")
    if floor and hf:
        only_matmuls_s = p["once_s"] + p["host_and_idle_s"] + steps * 1e-3 * matmul_ms
        out.append(
            f"\nThe weight matmuls (decoder and LM head) take {matmul_ms:.2f} ms of each step, "
            f"against {floor['step_ms']:.2f} ms for the same matmuls alone (the decode floor, "
            f"{floor['best']}). A step that was nothing but them, with this call's once-a-call "
            f"and host time, would sample at {sampling[hf]['median_s'] / only_matmuls_s:.2f}x "
            f"{hf}.\n"
        )
    return out


def grpo_section(r: dict) -> list[str]:
    """The GRPO step against TRL: settings, how each side runs, the phases, the same-work
    checks and each side's figures."""
    g = r.get("grpo")
    if not g:
        return []
    st, ours, trl = g["settings"], g["urt_jax"], g[TRL]
    same = g["same_work"]
    out = [
        "\n## GRPO step against TRL's GRPOTrainer\n",
        f"One GRPO step on each side: {st['prompts']} prompts (pairwise image-generation "
        "judgements, two images each, the UnifiedReward-Think template) x G = "
        f"{st['num_generations']} completions of exactly {st['max_new_tokens']} tokens "
        f"(temperature {st['temperature']:g}, top-p {st['top_p']:g}), the format and accuracy "
        f"rewards (urt_jax.rewards on both sides), group advantages, reference log-probs (beta "
        f"{st['beta']:g}), and one AdamW update (learning rate {st['learning_rate']:g}, gradient "
        "clipping 1.0) on all of the generation batch's completions, in micro-batches of "
        f"{st['micro_batch_rows']} rows whose gradients are summed; the vision tower frozen, "
        "fp32, the same checkpoint and tokenizer. Step time: median of "
        f"{g.get('method', {}).get('rounds', '?')} timed steps per side, one per turn, turns "
        "alternating, after one warm-up step each.\n",
        f"- urt_jax: `urt_jax.train.grpo.rollout` + `GRPOTrainer.step`; end of completions: "
        f"{ours['info'].get('eos')}; {ours['info'].get('media')}.",
        f"- TRL {trl['info'].get('trl')} (transformers {trl['info'].get('transformers')}, torch "
        f"{trl['info'].get('torch')}, sdpa attention, {trl['info'].get('optimizer')}): "
        f"`trainer.train()` in a thread of the worker, held after each optimizer step, one step "
        "per timed call (data loading, generation, rewards, reference log-probs, loss forward, "
        "backward, clipping, AdamW, scheduler: benchmarks/side_trl.py); end of completions: "
        f"{trl['info'].get('eos')}; {trl['info'].get('media')}.",
        f"- Same work: completion tokens per step {ours['completion_tokens']} (urt_jax) and "
        f"{trl['completion_tokens']} (TRL), expected {same['completion_tokens_per_step']}: "
        + ("equal" if same["completion_tokens_equal"] else "**not equal**")
        + f"; trainable parameters {ours['trainable_params']:,} and {trl['trainable_params']:,}: "
        + ("equal" if same["trainable_params_equal"] else "**not equal**")
        + f"; prompt tokens {ours['info'].get('prompt_tokens')} and "
        f"{trl['info'].get('prompt_tokens')}, the prompts' token ids "
        + ("identical" if same["prompts_equal"] else "**different**")
        + f" (rows padded to {ours['info'].get('padded_length')} and "
        f"{trl['info'].get('padded_length')} tokens).\n",
        _row(["phase (medians)", "urt_jax s", "TRL s"]),
        _row(["---"] * 3),
    ]
    seen = [*ours.get("phases_s", {}), *trl.get("phases_s", {})]
    for name in dict.fromkeys([*(p for p in GRPO_PHASES if p in seen), *seen]):
        a, b = ours.get("phases_s", {}).get(name), trl.get("phases_s", {}).get(name)
        out.append(_row([name, _f(a, 2) if a is not None else "-", _f(b, 2) if b is not None
                         else "-"]))  # fmt: skip
    out.append(_row(["**whole step**", _f(ours["median_s"], 2), _f(trl["median_s"], 2)]))
    out += [
        "\nurt_jax's generation includes building the prompts (template, image processing); "
        "TRL's is HF `generate` alone, its prompt processing is in rewards + host prep. "
        "urt_jax's reference log-probs are timed by waiting for their result before the update "
        "is dispatched.\n",
        _row(["side", "median s", "spread", "timed steps", "setup s", "first step s",
              "completion tokens/s", "peak RSS MiB", "over libraries MiB"]),
        _row(["---"] * 9),
    ]  # fmt: skip
    for name, s in ((n, g[n]) for n in ("urt_jax", TRL)):
        out.append(
            _row(
                [
                    name,
                    _f(s["median_s"], 2),
                    f"{s['spread']:.0%}",
                    str(len(s["times_s"])),
                    _f(s["setup_s"]),
                    _f(s["warmup_s"][0], 1),
                    _f(s["per_s"]),
                    _f(s["peak_rss_mib"], 0),
                    _f(s["peak_minus_base_mib"], 0),
                ]
            )
        )
    return out


def _grpo_case(p: dict) -> str:
    g = p.get("grpo_case", {})
    if not g:
        return ""
    rows = g["prompts_per_step"] * g["num_generations"]
    micro = g.get("micro_batch_rows") or rows
    return (
        f"run {p.get('grpo_run', '?')}, {g['prompts_per_step']} prompts x G = "
        f"{g['num_generations']}, {g['max_new_tokens']} new tokens, micro-batches of {micro} of "
        f"the {rows} rows (gradients summed, one AdamW step), {g.get('dtype')}, remat "
        f"{g.get('remat')}."
    )


def plan(r: dict) -> list[str]:
    p = r.get("plan_7b")
    if not p:
        return []
    if "error" in p:
        return ["\n## 7B plan\n", p["error"]]
    v = p["v5p"]
    out = [
        "\n## The 7B plan (Qwen2.5-VL-7B, compiled ahead of time on a CPU mesh)\n",
        f"Model {p['model']}, run {p['run']}: {p['dtype']}, remat {p['remat']}, "
        f"{p['micro_batch_rows']} rows per micro-batch x {p['grad_accum']} accumulation steps, "
        f"{p['images_per_row']} images of grid {p['image_grid_per_image']} per row, full depth "
        f"(text layers, vision blocks) {p['full_depth']}, the decoder layers a rolled scan as on "
        "a pod; FLOPs from the same programs with 1 and 2 decoder layers unrolled, extrapolated "
        "per layer (cost_analysis counts a loop's body once). GRPO: "
        + _grpo_case(p)
        + " XLA:CPU with "
        "cse_barrier_expander disabled, so that remat survives as on TPU."
        f" v5p: {v['hbm_gib_per_chip']} GiB HBM and "
        f"{v['bf16_tflops_per_chip']} bf16 TFLOP/s per chip; JAX sees one device per chip "
        "(megacore), so v5p-8 (4 chips, 8 TensorCores) is a 4-device mesh and the 8-device "
        "meshes are v5p-16 (memory is judged on the slice a mesh maps to). Step times are for "
        f"v5p-8 at {p['mfu_assumed']:.0%} MFU.\n",
        _row(["mesh", "slice", "step", "rows/chip", "peak GiB/chip", "fits", "v5p-8 step s"]),
        _row(["---"] * 7),
    ]  # fmt: skip
    for name, m in p["meshes"].items():
        e = m["estimate"]
        for case, c in e.items():
            if not isinstance(c, dict):
                continue
            secs = c.get("optimizer_step_s_v5p8", c.get("ref_and_update_s_v5p8"))
            out.append(
                _row(
                    [
                        name,
                        e["slice"],
                        case,
                        str(c["rows_per_device"]),
                        _f(c["peak_gib_per_chip"]),
                        "yes" if c["fits"] else "**no**",
                        _f(secs, 2),
                    ]
                )
            )
    first = next(iter(p["meshes"].values()))
    res = first["resident"]
    out.append(
        f"\nResident per device on {next(iter(p['meshes']))}: trainable parameters "
        f"{res['params_bytes'] / GIB:.1f} GiB, AdamW moments {res['opt_state_bytes'] / GIB:.1f} "
        f"GiB, frozen vision {res['frozen_bytes'] / GIB:.1f} GiB, gradient "
        f"accumulator {res['grad_bytes'] / GIB:.1f} GiB. SFT step time = model FLOPs of one "
        "optimizer step (128 rows) / (chips x peak x MFU); GRPO = reference log-probs + one "
        "update of prompts_per_step x G rows, rollout generation excluded; its rows/chip are "
        "those of one micro-batch.\n"
    )
    return out


def _malloc_sentence(method: dict) -> str:
    envs = method.get("worker_env") or {}
    if method.get("malloc") == "retain":
        env = next(iter(envs.values()), {})
        return (
            "Every side's glibc malloc keeps freed memory ("
            + " ".join(f"{k}={v}" for k, v in env.items())
            + "), so no step page-faults its temporaries in afresh.\n"
        )
    if envs:
        sides = ", ".join(envs)
        env = " ".join(f"{k}={v}" for k, v in next(iter(envs.values())).items())
        return (
            f"Huge pages for large allocations ({env}, which `urt-jax` sets for itself; "
            f"urt_jax.hugepages) in: {sides}; every other side with default glibc malloc "
            "settings.\n"
        )
    return "Default glibc malloc settings.\n"


def write_markdown(r: dict) -> str:
    s, mc = r["shape"], r["machine"]
    lines = [
        "# urt-jax vs transformers\n",
        f"Machine: {mc['cpu']}, {mc['cores']} cores; load average (1/5/15 min) at start "
        f"{_load(mc['loadavg_start'])}, at end {_load(mc.get('loadavg_end'))}. Model: "
        f"{s['name']} Qwen2.5-VL "
        f"({r['params']['total'] / 1e6:.1f}M parameters, {r['params']['vision'] / 1e6:.1f}M in "
        f"the frozen vision tower): text {s['hidden']} wide x {s['layers']} layers, GQA "
        f"{s['heads']}/{s['kv_heads']}, vocab {s['vocab']}; vision depth {s['vision_depth']}, "
        f"hidden {s['vision_hidden']}. fp32. Batch {s['batch']} x {s['seq']} tokens, one "
        f"{s['image']}x{s['image']} image per row, {s['reply']} target tokens per row. Sampling: "
        f"1 prompt of {s['prompt']} tokens x {s['samples']} samples x {s['new_tokens']} new "
        "tokens (no early stop). Each side in its own process, turns alternating "
        f"({r['method']['rounds']} rounds x {r['method']['steps_per_round']} calls"
        + (
            f", each turn opened by {r['method']['rewarm_calls_per_turn']} untimed call"
            if r["method"].get("rewarm_calls_per_turn")
            else ""
        )
        + "), medians after warm-up; transformers is timed as each of its sides in the details "
        "below (sdpa and eager attention, malloc settings) and the fastest counts. "
        + _malloc_sentence(r["method"]),
    ]
    busy = mc["loadavg_start"][0]  # before the run: later values include the run itself
    if busy > 0.5 * mc["cores"]:
        lines.append(
            f"**Warning: the machine was busy (load average {busy:.1f} on {mc['cores']} cores "
            "before the run): other processes competed for the CPU; timings are unreliable.**\n"
        )
    lines += summary(r)
    lines.append(f"\nMFU FLOP formula: {r['flops_formula']}.\n")
    lines.append(
        "Memory: peak resident set (Linux VmHWM, reset after warm-up) of the side's process "
        "during the timed calls, minus its resident set once its libraries were imported.\n"
    )
    lines += profile(r)
    lines += sampling_profile(r)
    if "recompiles" in r:
        rc = r["recompiles"]
        info = rc["info"]
        lines.append(
            f"\n## Recompilations\n\nWarm-up: {rc['warmup_steps']} steps, one per bucketed shape"
            f" ({rc['warmup_compiles']} compilations, {rc['warmup_s']:.1f} s). Then "
            f"{rc['steps']} steps on mixed-length batches ({info['mixed_distinct_shapes']} "
            f"distinct bucketed shapes, {info['mixed_shapes_not_in_warmup']} not seen in "
            f"warm-up): {rc['compiles_after_warmup']} compilations (jax.monitoring backend "
            "compile events, any function).\n"
        )
    lines += grpo_section(r)
    lines += plan(r)
    lines.append("\n## Details\n")
    lines += details(r)
    return "\n".join(lines) + "\n"

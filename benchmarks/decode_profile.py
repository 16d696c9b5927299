"""Where a sampling call's time goes: one ``urt_jax.generate.sample`` call traced with
jax.profiler, its XLA:CPU thunks (runtime events named after their HLO instructions) grouped by
what each instruction computes, read from the compiled HLO of the same program
(``urt_jax.generate.sampler.lower_sample``).

Groups: the decode loop's weight matmuls, LM head, attention over the KV cache, token choice and
log-probs (the sampler's ``choose_token`` scope), everything else in the loop; and what runs once
a call (vision tower, prefill, cache set-up, the decode-layout kernel copies). Thunks that run at
the same time share their overlap equally, so the groups add up to the time the sampler's
program kept the CPU busy; the rest of the call is the runtime's gaps between thunks, host work
and dispatch.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable

import jax

from urt_jax.generate.sampler import lower_sample, sample

WEIGHTS = "decoder weight matmuls"
LM_HEAD = "LM head"
ATTENTION = "attention over the KV cache"
CHOOSE = "token choice and log-probs (vocabulary-wide)"
OTHER = "other in the loop (norms, RoPE, cache writes, residuals, loop control)"
ONCE = "once a call (vision tower, prefill, cache set-up, kernel copies)"
GROUPS = (WEIGHTS, LM_HEAD, ATTENTION, CHOOSE, OTHER)
CHOOSE_SCOPE = "/choose_token/"  # the sampler's jax.named_scope

_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations|called_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)"
)
_DIMS = re.compile(r"\[([\d,]*)\]")
CONTAINERS = ("while", "conditional", "call")  # run their computations' instructions as thunks


class Instruction:
    """One HLO instruction of a compiled module: its result shape, opcode, the computations it
    calls (``control``: those whose instructions run as thunks of their own, a loop's body or a
    call's callee; ``calls``: all of them, fused ones included) and its metadata's op_name."""

    def __init__(self, line: str, name: str):
        self.name = name
        rest = line.split(" = ", 1)[1]
        self.shape, rest = _split_shape(rest)
        self.opcode = rest.split("(", 1)[0].strip()
        self.calls = [
            c.strip().lstrip("%")
            for group in _CALLED.findall(rest)
            for c in group.strip("{}").split(",")
            if c.strip()
        ]
        self.control = self.calls if self.opcode in CONTAINERS else []
        meta = re.search(r'op_name="([^"]*)"', rest)
        self.op_name = meta.group(1) if meta else ""
        self.line = line


def _split_shape(text: str) -> tuple[str, str]:
    """('(f32[2], s32[])', rest) or ('f32[8,512]{1,0}', rest) from 'SHAPE opcode(...)...'."""
    if text.startswith("("):
        depth = 0
        for i, ch in enumerate(text):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                return text[: i + 1], text[i + 1 :].lstrip()
    shape, _, rest = text.partition(" ")
    return shape, rest


def parse_hlo(text: str) -> tuple[str, str, dict[str, list[Instruction]]]:
    """The module's name, its entry computation's and its computations' instructions
    (computation name -> list)."""
    module = re.match(r"HloModule ([\w.\-]+)", text)
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            computations[current] = []
            entry = current if m.group(1) else entry
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            computations[current].append(Instruction(line, m.group(1)))
    return (module.group(1) if module else ""), entry, computations


def _reachable(
    start: Iterable[str], computations: dict[str, list[Instruction]], control: bool = False
) -> set[str]:
    """The computations ``start`` leads to, through every call, or (control=True) only through
    the containers' (whose instructions run as thunks, unlike a fusion's)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        c = todo.pop()
        if c in seen or c not in computations:
            continue
        seen.add(c)
        todo += [x for ins in computations[c] for x in (ins.control if control else ins.calls)]
    return seen


def _has_dim(text: str, size: int) -> bool:
    return any(str(size) in dims.split(",") for dims in _DIMS.findall(text))


def instruction_groups(hlo_text: str, vocab_size: int) -> tuple[str, dict[str, str]]:
    """The module's name and, for every instruction that runs as a thunk of its own (containers
    excluded: their computations' thunks report themselves), its group (``GROUPS`` or
    ``ONCE``).

    The decode loop is the while loop with the largest body. A matmul (a dot, or a fusion around
    one) in it is attention when it has batch dimensions, the LM head when its result has the
    vocabulary's size, else a weight matmul."""
    module, entry, computations = parse_hlo(hlo_text)
    scheduled = _reachable([entry], computations, control=True)
    loops = [ins for c in scheduled for ins in computations[c] if ins.opcode == "while"]
    in_loop: set[str] = set()
    if loops:
        body = max(loops, key=lambda w: len(_reachable(w.calls, computations)))
        in_loop = _reachable(body.control, computations, control=True)
    groups: dict[str, str] = {}
    for comp in scheduled:
        for ins in computations[comp]:
            if ins.opcode in CONTAINERS:
                continue
            if comp not in in_loop:
                groups[ins.name] = ONCE
                continue
            inner = [d for c in _reachable(ins.calls, computations) for d in computations[c]]
            dots = [d for d in [ins, *inner] if d.opcode == "dot"]
            if dots:
                if any("lhs_batch_dims" in d.line for d in dots):
                    groups[ins.name] = ATTENTION
                elif any(_has_dim(d.shape, vocab_size) for d in dots):
                    groups[ins.name] = LM_HEAD
                else:
                    groups[ins.name] = WEIGHTS
            elif any(CHOOSE_SCOPE in d.op_name for d in [ins, *inner]):
                groups[ins.name] = CHOOSE
            else:
                groups[ins.name] = OTHER
    return module, groups


def share_overlaps(events: list[tuple[float, float, str]]) -> dict[str, float]:
    """Seconds per group from (start, end, group) intervals, time covered by several intervals
    at once split equally among them: the groups add up to the union of the intervals."""
    points = sorted({t for s, e, _ in events for t in (s, e)})
    out: dict[str, float] = defaultdict(float)
    starts = sorted(events)
    active: list[tuple[float, float, str]] = []
    i = 0
    for a, b in zip(points, points[1:], strict=False):
        while i < len(starts) and starts[i][0] <= a:
            active.append(starts[i])
            i += 1
        active = [ev for ev in active if ev[1] > a]
        if active:
            for _, _, g in active:
                out[g] += (b - a) / len(active)
    return dict(out)


def thunk_events(trace_dir: str, module: str) -> list[dict]:
    """The trace's XLA:CPU thunk events of ``module`` (args hlo_module / hlo_op)."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(max(paths, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    return [
        e for e in events
        if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == module
    ]  # fmt: skip


def profile_sampling(model, prompt: dict, trace_dir: str | None = None, **options) -> dict:
    """Traces one ``sample(model, prompt, **options)`` call (after an untimed one that compiles)
    and returns seconds by group; the per-step figures divide the loop's groups by its steps (its
    iterations: one a new token but the first, which comes from the prefill's logits)."""
    vocab = model.config.text.vocab_size
    compiled = lower_sample(model, prompt, **options).compile()
    module, groups = instruction_groups(compiled.as_text(), vocab)
    sample(model, prompt, **options)  # compiles (the jit cache's own copy) and warms up
    own_dir = trace_dir is None
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="urt_jax_decode_trace_")
    try:
        jax.profiler.start_trace(trace_dir)
        try:
            t0 = time.perf_counter()
            out = sample(model, prompt, **options)
            call_s = time.perf_counter() - t0
        finally:
            jax.profiler.stop_trace()
        events = thunk_events(trace_dir, module)
    finally:
        if own_dir:
            shutil.rmtree(trace_dir, ignore_errors=True)
    if not events:
        raise RuntimeError(f"the trace has no thunk events of {module}")
    # containers' events (the while loop's) span their bodies' thunks and are left out
    spans = [
        (e["ts"] * 1e-6, (e["ts"] + e["dur"]) * 1e-6, groups[e["args"]["hlo_op"]])
        for e in events
        if e["args"]["hlo_op"] in groups
    ]
    if not spans:
        raise RuntimeError(f"no thunk of the trace is an instruction of {module}'s HLO")
    by_group = share_overlaps(spans)
    # the loop's iterations: the LM head runs once in each (the first token needs none)
    heads = [e["args"]["hlo_op"] for e in events if groups.get(e["args"]["hlo_op"]) == LM_HEAD]
    steps = len(heads) // max(len(set(heads)), 1) or max(int(out.lengths.max()) - 1, 1)
    loop_events = sum(1 for *_, g in spans if g != ONCE)
    busy = sum(by_group.values())
    return {
        "call_s": call_s,
        "busy_s": busy,
        "host_and_idle_s": max(call_s - busy, 0.0),
        "steps": steps,
        "once_s": by_group.get(ONCE, 0.0),
        "loop_s": {g: by_group.get(g, 0.0) for g in GROUPS},
        "step_ms": {g: 1e3 * by_group.get(g, 0.0) / steps for g in GROUPS},
        "thunks_per_step": loop_events / steps,
        "instructions": len(groups),
        # the loop's and calls' own events, and any instruction the HLO did not show
        "events_without_group": sorted({e["args"]["hlo_op"] for e in events} - set(groups)),
    }

"""PNG plots of a run: training curves of each stage and held-out accuracy per evaluation."""

from __future__ import annotations

import json
import os


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_grpo(metrics_path: str, out_png: str) -> str:
    """Reward (total and per reward function), accuracy and KL over GRPO steps."""
    plt = _pyplot()
    rows = read_metrics(metrics_path)
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = ["reward"] + sorted({k for r in rows for k in r if k.startswith("reward/")})
    for key in keys:
        if key.endswith("_std"):
            continue
        steps, values = _series(rows, key)
        ax.plot(steps, values, label=key, lw=2 if key == "reward" else 1)
    ax.set(xlabel="GRPO step", ylabel="mean over the batch", title="reward and accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    steps, values = _series(rows, "kl")
    ax_kl.plot(steps, values, color="tab:red")
    ax_kl.set(xlabel="GRPO step", ylabel="KL to the reference (k3)", title="KL")
    ax_kl.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_loss(metrics_paths: dict[str, str], out_png: str) -> str:
    """Training loss of each supervised stage."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, path in metrics_paths.items():
        steps, values = _series(read_metrics(path), "loss")
        ax.plot(steps, values, label=name, lw=1)
    ax.set(xlabel="step", ylabel="token cross-entropy", yscale="log", title="SFT loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_stages(stages: list[dict], out_png: str) -> str:
    """Held-out accuracy and format rate after each stage."""
    plt = _pyplot()
    names = [s["name"] for s in stages]
    x = range(len(stages))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(stages)), 3.6))
    width = 0.38
    acc = [s["accuracy"] for s in stages]
    fmt = [s["format_rate"] for s in stages]
    ax.bar([i - width / 2 for i in x], acc, width, label="accuracy")
    ax.bar([i + width / 2 for i in x], fmt, width, label="format rate")
    for i, a in enumerate(acc):
        ax.text(i - width / 2, a + 0.01, f"{a:.2f}", ha="center", fontsize=8)
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance (pairwise)")
    ax.set_xticks(list(x), names, rotation=15, fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="held-out", title="accuracy per stage")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_run(out: str, report: dict) -> dict[str, str]:
    """Every plot the run's outputs allow; returns {name: png path}."""
    plots = {}
    if report.get("stages"):
        plots["accuracy_per_stage"] = plot_stages(
            report["stages"], os.path.join(out, "accuracy_per_stage.png")
        )
    grpo = os.path.join(out, "grpo", "metrics.jsonl")
    if os.path.exists(grpo):
        plots["grpo"] = plot_grpo(grpo, os.path.join(out, "grpo.png"))
    sft = {
        name: os.path.join(out, name, "metrics.jsonl")
        for name in ("sft", "rs_sft")
        if os.path.exists(os.path.join(out, name, "metrics.jsonl"))
    }
    if sft:
        plots["sft_loss"] = plot_loss(sft, os.path.join(out, "sft_loss.png"))
    return plots

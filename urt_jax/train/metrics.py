"""Training metrics: one JSON line per logged step, TensorBoard events, and progress with ETA."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from urt_jax.atomic import cut_back_jsonl


class MetricsLogger:
    """Writes ``{out_dir}/metrics.jsonl`` and ``{out_dir}/tensorboard/``; shows progress.

    On a resumed run, lines for steps after the restored step (written before the interruption)
    and a torn last line are dropped, so the file keeps exactly one line per step.
    """

    def __init__(
        self,
        out_dir: str,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        progress: bool = True,
        enabled: bool = True,
        console_keys: tuple[str, ...] = (),
    ):
        self.enabled = enabled
        self.console_keys = console_keys  # shown after the loss on the console line
        self.total = total_steps
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._start_time = time.perf_counter()
        self._start_step = start_step
        self._tb = None
        self._bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        cut_back_jsonl(self.path, start_step)
        self._file = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start_step)
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        elapsed = time.perf_counter() - self._start_time
        done = step - self._start_step
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        row["eta_s"] = round(eta, 1) if np.isfinite(eta) else None
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(
                loss=_fmt(row.get("loss"), ".4f"),
                **{k: _fmt(row.get(k), ".3g") for k in self.console_keys},
                tok_s=_fmt(row.get("tokens_per_second"), ".0f"),
            )
            self._bar.refresh()
        else:
            eta_text = f"{eta / 60:.1f} min" if np.isfinite(eta) else "?"
            print(
                f"[urt-jax] step {step}/{self.total} loss {_fmt(row.get('loss'), '.4f')} "
                + "".join(f"{k} {_fmt(row.get(k), '.3g')} " for k in self.console_keys)
                + f"lr {_fmt(row.get('learning_rate'), '.3g')} "
                f"grad_norm {_fmt(row.get('grad_norm'), '.3g')} "
                f"{_fmt(row.get('tokens_per_second'), '.0f')} tok/s ETA {eta_text}",
                flush=True,
            )

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def _scalar(v):
    v = np.asarray(v)
    if v.dtype == bool:
        return bool(v)
    if np.issubdtype(v.dtype, np.integer):
        return int(v)
    f = float(v)
    return f if np.isfinite(f) else str(f)


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else str(v)

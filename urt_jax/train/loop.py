"""The step loop SFT and GRPO share: run, log, checkpoint, and stop cleanly on a signal.

SIGINT (Ctrl-C) and SIGTERM (what a preempted TPU VM or a scheduler sends) do not interrupt a
step: the loop finishes the step it is in, writes a checkpoint of it, flushes the metrics and
raises ``RunStopped``, which the command line turns into a message and exit code
``STOPPED_EXIT_CODE``; rerunning the same command resumes from that step. A second signal
aborts at once (the last complete checkpoint stays; a half-written one is ignored on resume).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from urt_jax.train.checkpoint import Checkpointer
from urt_jax.train.metrics import MetricsLogger

log = logging.getLogger(__name__)

STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request, resumable
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """Training stopped on a signal after a checkpoint of ``step``."""

    def __init__(self, step: int, signum: int, directory: str):
        self.step, self.signum = step, signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}: its checkpoint is in {directory}; rerun the "
            "same command to resume from it"
        )


class GracefulStop:
    """Within: the first SIGINT/SIGTERM sets ``requested`` (the signal number) for the loop to
    act on at the end of its step; the second ends the process at once. Outside the main thread
    (where Python cannot take signals) it does nothing."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:
            os.write(2, f"urt-jax: {signal.Signals(signum).name} again: aborting now\n".encode())
            os._exit(128 + signum)
        self.requested = signum
        log.warning(
            "%s: finishing this step, then saving a checkpoint and stopping "
            "(send it again to abort at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_steps(
    start: int,
    max_steps: int,
    one_step: Callable[[int], dict],
    checkpoint_state: Callable[[int], tuple[Any, dict]],
    ckpt: Checkpointer,
    logger: MetricsLogger,
    log_every: int,
) -> dict:
    """Steps ``start + 1 .. max_steps``: ``one_step(step)`` returns the step's metrics, logged
    every ``log_every`` steps and at the last; then ``checkpoint_state(step)`` (train state,
    data state) is saved when due, always at the last step and on a stop request. Closes ``ckpt``
    (waiting for its saves) and ``logger`` however the loop ends. Returns the last metrics."""
    last: dict = {}
    with GracefulStop() as stop:
        try:
            for step in range(start + 1, max_steps + 1):
                last = one_step(step)
                final = step == max_steps
                if step % log_every == 0 or final or stop.requested:
                    logger.log(step, last)
                state, data_state = checkpoint_state(step)
                ckpt.save(step, state, data_state, force=final or stop.requested is not None)
                if stop.requested is not None and not final:
                    ckpt.wait()
                    raise RunStopped(step, stop.requested, ckpt.directory)
        finally:
            try:
                ckpt.close()
            finally:
                logger.close()
    return last

"""Training checkpoints with orbax: every N steps and at the end, keep K, asynchronous, atomic.

A checkpoint holds the train state (trainable parameters, optimiser state, step, RNG) and the data
iterator's state, so a resumed run continues with the exact next batch. Orbax writes each step into
a temporary directory and renames it when complete; a directory left half-written by a killed
process is never taken for a checkpoint: it is reported and the last complete step is used. A
complete-looking step that fails to restore is reported too, and the previous one is tried.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

_TMP = re.compile(r"\.orbax-checkpoint-tmp")


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none fits the run's state."""


def _name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten_named(tree) -> tuple[dict, object]:
    """{dotted path: leaf} and the treedef, so any pytree (nnx.State, optax states) is stored
    with readable names and restored into the same structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = {".".join(_name(e) for e in path) or "root": leaf for path, leaf in leaves}
    if len(named) != len(leaves):
        raise ValueError("two leaves of the train state have the same path name")
    return named, treedef


def unflatten_named(named: dict, treedef, like) -> object:
    leaves, _ = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(
        treedef, [named[".".join(_name(e) for e in path) or "root"] for path, _ in leaves]
    )


class Checkpointer:
    def __init__(self, directory: str, every: int, keep: int, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every,
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def half_written(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if _TMP.search(n))

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        named, _ = flatten_named(state)
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(named), data=ocp.args.JsonSave(data_state)
            ),
            force=force,
        )

    def restore_latest(self, abstract_state) -> tuple[int, object, dict] | None:
        """(step, state, data iterator state) of the newest complete checkpoint, or None."""
        for name in self.half_written():
            log.warning(
                "checkpoint %s is half-written (the process was stopped while saving); ignored",
                os.path.join(self.directory, name),
            )
        named_abstract, treedef = flatten_named(abstract_state)
        steps = sorted(self.manager.all_steps(), reverse=True)
        failure = None
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(named_abstract), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any failure means: try the previous step
                failure = e
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); trying an older one",
                    step,
                    self.directory,
                    e,
                )
                continue
            state = unflatten_named(restored["state"], treedef, abstract_state)
            return step, state, restored["data"]
        if steps:  # never start over on top of checkpoints (a new run would rotate them out)
            raise CheckpointRestoreError(
                f"{self.directory}: none of the checkpoints (steps {steps}) can be restored into "
                f"this run's state (last error: {failure}). They may come from another model "
                "config or an older urt-jax (before the decoder layers were stored stacked); "
                "use a new output_dir, or move the checkpoints away to start over."
            )
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

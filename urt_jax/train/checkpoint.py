"""Training checkpoints with orbax: every N steps and at the end, keep K, asynchronous, atomic.

A checkpoint holds the train state (trainable parameters, optimiser state, step, RNG) and the data
iterator's state, so a resumed run continues with the exact next batch. Orbax writes each step into
a temporary directory and renames it when complete; a directory left half-written by a killed
process is never taken for a checkpoint: it is reported and the last complete step is used. A
complete-looking step that fails to restore while an older one restores is corrupt: it is moved
aside (renamed ``{step}.corrupt``, never deleted) and reported, and the run goes on from the older
step, saving the later steps again as it re-reaches them. A save that fails (a full disk, a
lost mount) stops training at the next step with one message; the checkpoints already written
are untouched (a step is renamed into place only once complete).
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


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written."""


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
        """Starts saving ``step`` when it is due (or ``force``); first raises CheckpointSaveError
        if an earlier asynchronous save failed."""
        self.check()
        named, _ = flatten_named(state)
        try:
            return self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(named), data=ocp.args.JsonSave(data_state)
                ),
                force=force,
            )
        except Exception as e:  # noqa: BLE001 - orbax wraps the OSError of a full disk
            raise self._save_error(step, e) from e

    def check(self) -> None:
        """Raises CheckpointSaveError if an asynchronous save has failed since the last check."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(None, e) from e

    def _save_error(self, step: int | None, error: Exception) -> CheckpointSaveError:
        which = "a checkpoint" if step is None else f"the checkpoint of step {step}"
        kept = sorted(self.manager.all_steps())
        return CheckpointSaveError(
            f"{self.directory}: writing {which} failed ({_root_cause(error)}); training stopped. "
            f"Checkpoints already written: steps {kept or 'none'}; free space (or fix the "
            "directory) and rerun the same command to resume from the newest."
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
            self._quarantine([s for s in steps if s > step])
            return step, state, restored["data"]
        if steps:  # never start over on top of checkpoints (a new run would rotate them out)
            raise CheckpointRestoreError(
                f"{self.directory}: none of the checkpoints (steps {steps}) can be restored into "
                f"this run's state (last error: {failure}). They may come from another model "
                "config or an older urt-jax (before the decoder layers were stored stacked); "
                "use a new output_dir, or move the checkpoints away to start over."
            )
        return None

    def _quarantine(self, steps: list[int]) -> None:
        """Moves the given (unrestorable) steps aside, so that the run can save them again."""
        for step in steps:
            source = os.path.join(self.directory, str(step))
            target = f"{source}.corrupt"
            n = 1
            while os.path.exists(target):
                n += 1
                target = f"{source}.corrupt{n}"
            os.rename(source, target)
            log.warning(
                "checkpoint step %d cannot be restored: moved to %s (kept for inspection); "
                "the run goes on from the newest checkpoint that restores",
                step,
                target,
            )
        if steps:
            self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self.check()

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
            self.check()
        finally:
            self.manager.close()


def _root_cause(error: BaseException) -> str:
    """The innermost exception of a chain, as ``Type: message`` (orbax wraps OS errors)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"

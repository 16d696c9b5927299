"""Optional activation rematerialisation (gradient checkpointing) of decoder and vision blocks."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

REMAT_POLICIES: dict[str, Callable | None] = {
    # recompute everything in the backward pass: least memory
    "full": jax.checkpoint_policies.nothing_saveable,
    # keep matmul outputs without batch dims (weights x activations), recompute the rest
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # keep every matmul output
    "dots_all": jax.checkpoint_policies.checkpoint_dots,
}


def check_remat(name: str) -> str:
    if name != "none" and name not in REMAT_POLICIES:
        raise ValueError(
            f"unknown remat policy {name!r}; expected 'none' or one of {sorted(REMAT_POLICIES)}"
        )
    return name


def maybe_remat(fn: Callable, policy: str) -> Callable:
    """``fn(module, *args)`` wrapped in nnx.remat with the named policy ('none' = unchanged)."""
    if policy == "none":
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[check_remat(policy)], prevent_cse=True)


def call_block(block, policy: str, *args):
    """``block(*args)``, rematerialised with the named policy."""
    return maybe_remat(_call, policy)(block, *args)


def _call(block, *args):
    return block(*args)

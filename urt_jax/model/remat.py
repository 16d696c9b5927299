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


def call_block(block: nnx.Module, policy: str, *args):
    """``block(*args)``, rematerialised with the named policy ('none' = a plain call).

    The block's state is passed to ``jax.checkpoint`` as an argument and merged back inside,
    so a block whose parameters are frozen (held outside the traced trainable state, like the
    vision tower in SFT) is rematerialised like any other."""
    if policy == "none":
        return block(*args)
    graphdef, state = nnx.split(block)

    def pure(state, *args):
        return nnx.merge(graphdef, state)(*args)

    return jax.checkpoint(pure, policy=REMAT_POLICIES[check_remat(policy)], prevent_cse=True)(
        state, *args
    )

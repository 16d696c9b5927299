"""The one logical-axis rules table.

Every parameter is created with ``logical_axes`` metadata (one name per dimension, see
urt_jax.model); this table maps each logical name to mesh axes (data, fsdp, tensor). A dimension
whose size the mesh axes do not divide is replicated instead (e.g. 2 kv heads on tensor=4).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("hidden", None),  # the residual stream's width (whole on every device)
    # text decoder parameters ("layers": the stacked decoder layers' leading axis)
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("norm", None),
    # vision tower parameters
    ("vision_patch", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_merge", "fsdp"),
    ("vision_norm", None),
)


def _mesh_axes_for(name: str | None, rules: Sequence[tuple[str, MeshAxes]]) -> MeshAxes:
    if name is None:
        return None
    for logical, mesh_axes in rules:
        if logical == name:
            return mesh_axes
    raise KeyError(f"logical axis {name!r} has no entry in the rules table")


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """PartitionSpec for a tensor of ``shape`` whose dimensions carry logical ``axes``."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        mesh_axes = _mesh_axes_for(name, rules)
        if mesh_axes is None:
            spec.append(None)
            continue
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        names = tuple(a for a in names if a in mesh.shape and a not in used)
        ways = 1
        for a in names:
            ways *= mesh.shape[a]
        if not names or ways == 1 or size % ways:
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``x`` held to the sharding its logical ``axes`` get on the mesh the trace runs under
    (``urt_jax.sharding.mesh.activation_mesh``); unchanged without one. Inside the decoder's
    scan XLA otherwise propagates shardings from the weights alone: on fsdp 8 it replicated
    the batch and all-reduced every activation, holding far more per device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))


def param_sharding(
    var, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES
) -> NamedSharding:
    """NamedSharding of an nnx Variable from its ``logical_axes`` metadata (replicated if none)."""
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    axes = meta.get("logical_axes")
    shape = var.shape if hasattr(var, "shape") else var.get_value().shape
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def state_shardings(state, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES):
    """A pytree of NamedSharding matching an nnx.State (for jit in/out_shardings)."""
    import flax.nnx as nnx

    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(param_sharding(x, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))

"""Creating or loading a model straight into its shards."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.sharding.rules import state_shardings


def init_model(
    config: Qwen25VLConfig,
    dtype: str = "float32",
    remat: str = "none",
    seed: int = 0,
    mesh: Mesh | None = None,
    kernels: str = "auto",
) -> Qwen25VL:
    """A randomly initialised model; with a mesh, each parameter is created in its shards (the
    initialiser is jitted with the rules table's out_shardings, never materialised whole)."""

    def build() -> Qwen25VL:
        return Qwen25VL(config, dtype=dtype, remat=remat, kernels=kernels, rngs=nnx.Rngs(seed))

    if mesh is None:
        return build()
    graphdef, abstract_state = nnx.split(abstract_model(config, mesh, dtype, remat, kernels))
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
    state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def abstract_model(
    config: Qwen25VLConfig,
    mesh: Mesh,
    dtype: str = "float32",
    remat: str = "none",
    kernels: str = "auto",
) -> Qwen25VL:
    """The model with a sharded ``jax.ShapeDtypeStruct`` (the rules table's sharding) for every
    weight, nothing allocated: the trainers take it like a loaded model, and their jitted steps
    can then be lowered and compiled ahead of time (benchmarks/plan_7b.py)."""
    model = nnx.eval_shape(
        lambda: Qwen25VL(config, dtype=dtype, remat=remat, kernels=kernels, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(model)
    placed = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state,
        state_shardings(state, mesh),
    )
    return nnx.merge(graphdef, placed)

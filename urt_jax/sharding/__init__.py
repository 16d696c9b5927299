"""Device meshes and the logical-axis rules that place parameters and activations on them."""

from urt_jax.sharding.rules import (
    LOGICAL_AXIS_RULES,
    logical_to_spec,
    param_sharding,
    state_shardings,
)

__all__ = ["LOGICAL_AXIS_RULES", "logical_to_spec", "param_sharding", "state_shardings"]

"""urt_jax model directories in orbax format: ``config.json`` + ``params/`` (an orbax checkpoint).

This is the native format for JAX training (sharded restore straight onto a mesh, no conversion on
each start); ``urt-jax convert`` moves between it and Hugging Face safetensors.
"""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp
from flax import nnx

from urt_jax.model.config import Qwen25VLConfig
from urt_jax.model.hf import CheckpointError, _abstract_model, write_config_and_aux_files
from urt_jax.model.layers import DTypePolicy
from urt_jax.model.qwen2_5_vl import Qwen25VL
from urt_jax.model.text import STACKED_PATH

PARAMS_DIR = "params"


def _param_tree(model: Qwen25VL) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save_orbax(
    model: Qwen25VL, out_dir: str | os.PathLike, *, source_dir: str | None = None
) -> None:
    """Writes config.json and params/ (orbax; atomic: a partial write is never left as params/)."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    params_dir = os.path.join(out_dir, PARAMS_DIR)
    if os.path.exists(params_dir):
        shutil.rmtree(params_dir)
    params = _param_tree(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params_dir, params)
    checkpointer.wait_until_finished()
    dtypes = {leaf.dtype.name for leaf in jax.tree.leaves(params)}
    dtype = dtypes.pop() if len(dtypes) == 1 else model.config.dtype
    write_config_and_aux_files(model, out_dir, dtype, source_dir)


def load_orbax(
    model_dir: str | os.PathLike,
    dtype: str | DTypePolicy | None = None,
    mesh: jax.sharding.Mesh | None = None,
    remat: str = "none",
    kernels: str = "auto",
) -> Qwen25VL:
    """Restores a model saved by save_orbax, optionally sharded onto ``mesh``.

    dtype None keeps the stored dtype; otherwise parameters are cast after restore.
    """
    from urt_jax.sharding.rules import param_sharding

    model_dir = os.path.abspath(os.fspath(model_dir))
    params_dir = os.path.join(model_dir, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"{model_dir}: no orbax '{PARAMS_DIR}/' directory here")
    config = Qwen25VLConfig.from_hf_file(model_dir)
    policy = DTypePolicy.parse(dtype if dtype is not None else config.dtype)
    abstract = _abstract_model(config, policy, remat, kernels)
    graphdef, state = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = nnx.state(abstract, nnx.Param)
    target = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(
            v.shape, v.get_value().dtype, sharding=param_sharding(v, mesh) if mesh else device
        ),
        params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(params_dir).item_metadata.tree
    target_pure = nnx.to_pure_dict(target)
    # Restore in the stored dtype, then cast to the policy's param dtype.
    target_pure = jax.tree.map(
        lambda t, m: jax.ShapeDtypeStruct(t.shape, m.dtype, sharding=t.sharding),
        target_pure,
        _with_int_keys(stored, target_pure, params_dir),
    )
    restored = checkpointer.restore(params_dir, target_pure)
    restored = jax.tree.map(lambda a: a.astype(policy.param_dtype), restored)
    nnx.replace_by_pure_dict(state, restored)
    model = nnx.merge(graphdef, state)
    model.source_dir = model_dir
    return model


def _with_int_keys(stored, like, where: str, path: tuple = ()):
    """Orbax metadata trees use string keys for list indices; align them with ``like``."""
    if not isinstance(like, dict):
        return stored
    out = {}
    for k, v in like.items():
        key = str(k) if isinstance(stored, dict) and str(k) in stored else k
        if not isinstance(stored, dict) or key not in stored:
            dotted = ".".join(map(str, (*path, k)))
            old = "0" in stored if isinstance(stored, dict) and path == STACKED_PATH else False
            raise CheckpointError(
                f"{where}: parameter {dotted} is not in the checkpoint"
                + (
                    " (it holds the decoder layers one by one, as urt-jax wrote them before "
                    "they were stored stacked: export it to HF with that version, then load "
                    "or convert the HF directory)"
                    if old
                    else " (written for another model config?)"
                )
            )
        out[k] = _with_int_keys(stored[key], v, where, (*path, k))
    return out

"""Device meshes with the axes (data, fsdp, tensor), from config, and multi-host start-up."""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both: FSDP is data parallel too


@dataclasses.dataclass
class MeshConfig:
    data: int = -1  # data-parallel ways; -1: all devices the other axes leave
    fsdp: int = 1  # ways parameters, gradients and optimiser state are split (and the batch)
    tensor: int = 1  # ways the heads and the MLP's hidden units are split
    distributed: bool = False  # call jax.distributed.initialize() before anything else
    coordinator_address: str | None = None  # for CPU/GPU clusters without auto-detection
    num_processes: int | None = None  # with coordinator_address: how many processes
    process_id: int | None = None  # with coordinator_address: this process's index


def initialize_distributed(cfg: MeshConfig) -> None:
    """jax.distributed.initialize() when configured (TPU pods detect everything themselves)."""
    if not cfg.distributed or jax.distributed.is_initialized():  # once per process
        return
    # CPU processes need a collectives library to talk to each other (TPU/GPU ignore this).
    if jax.config.jax_cpu_collectives_implementation in (None, "none", ""):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {
        k: v
        for k, v in (
            ("coordinator_address", cfg.coordinator_address),
            ("num_processes", cfg.num_processes),
            ("process_id", cfg.process_id),
        )
        if v is not None
    }
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d devices (%d local)",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
    )


def mesh_shape(cfg: MeshConfig, device_count: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, found {_named(sizes)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: sizes must be positive or -1, found {_named(sizes)}")
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if device_count % fixed:
            raise ValueError(
                f"mesh: {device_count} devices do not divide by the fixed axes {_named(sizes)}"
            )
        sizes[sizes.index(-1)] = device_count // fixed
    if int(np.prod(sizes)) > device_count:
        raise ValueError(
            f"mesh {_named(sizes)} needs {int(np.prod(sizes))} devices, "
            f"only {device_count} are available"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; a mesh smaller than the device count uses the first ones."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    n = int(np.prod(shape))
    if n < len(devices):
        log.warning("mesh %s uses %d of %d devices", _named(shape), n, len(devices))
    return Mesh(np.asarray(devices[:n]).reshape(shape), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_ways(mesh: Mesh) -> int:
    """How many ways the batch is split: data x fsdp (tensor-parallel devices share rows)."""
    return int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES]))


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int | None) -> NamedSharding:
    """An ``ndim``-dimensional array's sharding with ``batch_axis`` split over data x fsdp and
    every other axis replicated (None: all replicated)."""
    spec = [None] * ndim
    if batch_axis is not None:
        spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, PartitionSpec(*spec))


def put_whole(mesh: Mesh, array: np.ndarray, batch_axis: int | None) -> jax.Array:
    """A global array from the whole ``array``, which every process holds identically (rollouts,
    sampler prompts): each process places its own devices' part. The batch axis is split over
    data x fsdp; None replicates."""
    array = np.asarray(array)
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, array.ndim, batch_axis), array, array.shape
    )


def to_host(value) -> np.ndarray:
    """A jax array as one numpy array on this process. An array split over several processes is
    gathered from all of them: every process must then call this, in the same order."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def writes_here() -> bool:
    """Whether this process writes shared outputs (files every process computed alike)."""
    return jax.process_index() == 0


def wait_for_writer(name: str) -> None:
    """On several processes, a barrier: no process reads what process 0 writes before it has."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _named(sizes) -> dict[str, int]:
    return dict(zip(AXES, sizes, strict=True))


def activation_mesh(mesh: Mesh):
    """Context for tracing a model call (inside jit) that runs on ``mesh``: the activations the
    model constrains (``rules.constrain``) take the rules table's sharding on it."""
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)

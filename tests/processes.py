"""CLI stages in subprocesses: alone, or as jax.distributed processes on this machine."""

import os
import socket
import subprocess

import numpy as np

from urt_jax.model.safetensors_io import SafetensorsCheckpoint


def run_together(commands: list[list[str]], devices: int, timeout: int = 600) -> None:
    """Starts every command at once, each with ``devices`` CPU devices, and waits for all; a
    failure reports the end of its output."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for cmd in commands
    ]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]


def run_distributed(command: list[str], processes: int, devices: int) -> None:
    """``command`` (a urt-jax CLI call taking overrides) as ``processes`` jax.distributed
    processes of ``devices`` CPU devices each, coordinated on a free local port."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    mesh = [
        "mesh.distributed=true",
        f"mesh.coordinator_address=localhost:{port}",
        f"mesh.num_processes={processes}",
    ]
    run_together([[*command, *mesh, f"mesh.process_id={pid}"] for pid in range(processes)], devices)


def hf_params(out: str) -> dict[str, np.ndarray]:
    """The tensors of the Hugging Face export in ``{out}/hf``."""
    with SafetensorsCheckpoint.open(os.path.join(out, "hf")) as ckpt:
        return {k: np.array(ckpt.get(k)) for k in ckpt.keys()}

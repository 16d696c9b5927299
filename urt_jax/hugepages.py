"""Large host allocations on transparent huge pages, for the CPU backend's step temporaries.

XLA:CPU allocates a step's temporaries afresh every step, and glibc returns such large blocks to
the kernel when they are freed, so every step faults them in again, 4 KiB at a time. With
glibc's ``glibc.malloc.hugetlb=1`` tunable, malloc asks for transparent huge pages
(``madvise(MADV_HUGEPAGE)``) on the blocks it maps, and a step takes a few percent of the
faults (docs/benchmarks.md). glibc reads tunables only when a process starts, so the command line
re-executes itself once with the tunable set (``reexec_with_hugepages``). ``URT_JAX_HUGEPAGES=0``
leaves malloc as it is; a ``GLIBC_TUNABLES`` that already sets ``glibc.malloc.hugetlb`` is kept.
A host with a TPU or GPU (or ``JAX_PLATFORMS`` naming another backend first) is not restarted:
its steps' temporaries live on the accelerator.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "URT_JAX_HUGEPAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError, TypeError):
        return None


# device files of the accelerators JAX would run on instead of the CPU: TPU (v4: accel, later
# generations: vfio), NVIDIA and AMD GPUs
ACCELERATOR_DEVICES = ("accel*", "vfio/[0-9]*", "nvidia[0-9]*", "kfd")


def accelerator_present(dev: str = "/dev") -> bool:
    """Whether this host has a TPU or GPU device file."""
    return any(glob.glob(os.path.join(dev, pattern)) for pattern in ACCELERATOR_DEVICES)


def runs_on_cpu(environ: Mapping[str, str], accelerator: bool) -> bool:
    """Whether JAX will run on the CPU: ``JAX_PLATFORMS`` names it first, or is unset on a host
    without an accelerator."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    return platforms[0] == "cpu" if platforms else not accelerator


def transparent_hugepage_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode, the bracketed word of ``always [madvise] never``, or None."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    return next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), None)


def wanted(environ: Mapping[str, str], thp_mode: str | None, glibc: tuple[int, int] | None) -> bool:
    """Whether to start again with the tunable: glibc >= 2.35 (which has it), a kernel that hands
    out huge pages on request, no opt-out, and no setting of the tunable already in place."""
    if environ.get(OPT_OUT, "1") == "0":
        return False
    if glibc is None or glibc < (2, 35) or thp_mode not in ("always", "madvise"):
        return False
    return TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def with_hugepages(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to the tunables already set."""
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    return {**environ, "GLIBC_TUNABLES": ":".join([*tunables, f"{TUNABLE}=1"])}


def restart_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment the command line restarts with on this machine, or None where it does
    not restart (``wanted``)."""
    if not runs_on_cpu(environ, accelerator_present()):
        return None
    if not wanted(environ, transparent_hugepage_mode(), glibc_version()):
        return None
    return with_hugepages(environ)


def reexec_with_hugepages() -> None:
    """Replaces this process by the same command with the tunable set (``restart_env``); returns
    only when it does not restart. Call it first thing, before anything heavy is imported."""
    env = restart_env(os.environ)
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)

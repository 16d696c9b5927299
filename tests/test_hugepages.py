"""The command line's restart with glibc's huge-page malloc tunable (urt_jax.hugepages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from urt_jax import hugepages

MODERN_GLIBC = (2, 36)

# Re-executes itself like the command line, then maps a 64 MiB malloc block and writes it.
PROBE = """
import ctypes, json, os, resource
from urt_jax.hugepages import reexec_with_hugepages
reexec_with_hugepages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size)
ctypes.memset(block, 1, size)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
pages = size // os.sysconf("SC_PAGE_SIZE")
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "faults": faults, "pages": pages}))
"""


def test_only_where_jax_runs_on_the_cpu(tmp_path):
    assert hugepages.runs_on_cpu({}, accelerator=False)
    assert not hugepages.runs_on_cpu({}, accelerator=True)  # a TPU VM or a GPU host
    assert hugepages.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, accelerator=True)
    assert not hugepages.runs_on_cpu({"JAX_PLATFORMS": "tpu,cpu"}, accelerator=False)
    dev = tmp_path / "dev"
    dev.mkdir()
    assert not hugepages.accelerator_present(str(dev))
    (dev / "nvidia0").touch()
    assert hugepages.accelerator_present(str(dev))
    (dev / "nvidia0").unlink()
    (dev / "vfio").mkdir()
    (dev / "vfio" / "0").touch()  # a TPU v5e/v5p/v6e chip
    assert hugepages.accelerator_present(str(dev))


def test_wanted_only_where_glibc_and_the_kernel_can_and_nobody_said_otherwise():
    assert hugepages.wanted({}, "madvise", MODERN_GLIBC)
    assert hugepages.wanted({}, "always", MODERN_GLIBC)
    assert not hugepages.wanted({}, "never", MODERN_GLIBC)
    assert not hugepages.wanted({}, None, MODERN_GLIBC)  # no THP in this kernel
    assert not hugepages.wanted({}, "madvise", (2, 34))  # glibc without the tunable
    assert not hugepages.wanted({}, "madvise", None)  # not glibc
    assert not hugepages.wanted({"URT_JAX_HUGEPAGES": "0"}, "madvise", MODERN_GLIBC)
    assert hugepages.wanted({"URT_JAX_HUGEPAGES": "1"}, "madvise", MODERN_GLIBC)
    set_by_user = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert not hugepages.wanted(set_by_user, "madvise", MODERN_GLIBC)
    other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert hugepages.wanted(other, "madvise", MODERN_GLIBC)


def test_tunable_added_to_those_already_set():
    env = hugepages.with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b"}
    assert hugepages.with_hugepages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_kernel_mode_read_from_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hugepages.transparent_hugepage_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert hugepages.transparent_hugepage_mode(str(path)) == "always"
    assert hugepages.transparent_hugepage_mode(str(tmp_path / "missing")) is None


def _probe(**env) -> dict:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "URT_JAX_HUGEPAGES")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(
    hugepages.restart_env({}) is None,
    reason="this machine's C library or kernel has no transparent huge pages for malloc",
)
def test_restarted_process_maps_large_blocks_on_huge_pages():
    restarted = _probe()
    assert restarted["tunables"] == "glibc.malloc.hugetlb=1"
    assert restarted["faults"] < restarted["pages"] // 16  # 2 MiB pages, not 4 KiB ones
    plain = _probe(URT_JAX_HUGEPAGES="0")
    assert plain["tunables"] is None
    assert plain["faults"] >= plain["pages"]  # every 4 KiB page faulted in on its own

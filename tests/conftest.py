"""Test setup: 8 fake CPU devices for mesh tests (set before jax is imported anywhere)."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# media files the pre-flight check passed: remembered per test session, not in ~/.cache
os.environ.setdefault("URT_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="urt-jax-test-cache-"))
# Identical computations built by different test objects compile once per session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/urt-jax-test-jit-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import contextlib  # noqa: E402

import pytest  # noqa: E402

# A few steps of every stage of the embedded demo: enough to exercise the whole pipeline.
DEMO_SMALL = [
    "data.synthetic.n_train=8",
    "data.synthetic.n_heldout=4",
    "train.max_steps=2",
    "train.progress=false",
    "eval.max_new_tokens=4",
    "eval.max_items=2",
    "rejection.max_prompts=2",
    "rejection.max_new_tokens=4",
    "rejection.samples_per_prompt=2",
    "rejection.sft_max_steps=2",
    "grpo.max_steps=1",
    "grpo.prompts_per_step=2",
    "grpo.num_generations=2",
    "grpo.max_new_tokens=4",
]


@contextlib.contextmanager
def working_directory(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory):
    """A directory outside the repository in which `urt-jax run configs/demo.yaml` (found among
    the files shipped in the package) has run a few steps of every stage into runs/demo."""
    from urt_jax.cli import main as cli_main

    work = tmp_path_factory.mktemp("work")
    with working_directory(work):
        assert cli_main(["run", "configs/demo.yaml", "output_dir=runs/demo", *DEMO_SMALL]) == 0
    return work

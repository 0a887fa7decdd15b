"""Suite-wide settings: a compilation cache shared by every worker and subprocess, and
one xdist worker per group of tests that share a module-scoped fixture."""

import os
import tempfile

import pytest

# XLA compiles the same programs many times in this suite: each training test builds a
# Trainer (new jitted functions) and each CLI or fault test starts a process. One
# persistent cache, fresh for every run of the suite, compiles each program once; what
# runs is the same executable either way. Set before jax is imported, inherited by the
# xdist workers and by every subprocess.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxar-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_collection_modifyitems(items):
    """Tests of a module that names `XDIST_GROUP_BY` (a parametrized module-scoped
    fixture) run on one worker per parameter (`--dist loadgroup`), so each worker
    builds each fixture once."""
    for item in items:
        by = getattr(item.module, "XDIST_GROUP_BY", None)
        callspec = getattr(item, "callspec", None)
        if by and callspec is not None and by in callspec.params:
            value = callspec.params[by]
            name = value[0] if isinstance(value, tuple) else value
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{name}"))

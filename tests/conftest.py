"""Suite-wide settings: a compilation cache shared by every worker and subprocess, XLA
settings that compile faster, and an xdist schedule that keeps the tests sharing a
module-scoped fixture on one worker."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

# XLA compiles the same programs many times in this suite: each training test builds a
# Trainer (new jitted functions) and each CLI or fault test starts a process. One
# persistent cache, fresh for every run of the suite, compiles each program once; what
# runs is the same executable either way. Set before jax is imported, inherited by the
# xdist workers and by every subprocess.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxar-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# Compiling dominates this suite's tiny programs on CPU. Two XLA:CPU settings cut it:
# backend (LLVM) optimization off, and fusions emitted by XLA's loop emitters instead of
# its MLIR fusion emitters, which take longer to compile (one protocol case: 8.8 s of
# backend compilation with them, 4.9 s without). The recorded golden numbers and every
# exact comparison hold unchanged; the per-layer float-tolerance comparisons of the fast
# convolutions compile at the default level (test_fast_conv.py). Inherited by the workers
# and by every subprocess, so compared runs share the settings; a flag the caller sets is
# left as it is. XLA flags come and go between jaxlib releases and jaxlib aborts on one it
# does not know, so only the flags the installed jaxlib accepts are set: a flag that is
# gone changes the suite's speed, nothing else.
_SUITE_XLA_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
_DECIDED = "JAXAR_SUITE_XLA_FLAGS"  # set by the first process; the workers inherit it


def known_xla_flags(flags: dict[str, str]) -> dict[str, str]:
    """The subset of `flags` that the installed jaxlib accepts (one probe process)."""
    if not flags:
        return {}
    env = {**os.environ, "XLA_FLAGS": " ".join(f"--{k}={v}" for k, v in flags.items())}
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
        env=env, capture_output=True, text=True, check=False,
    )
    if probe.returncode == 0:
        return dict(flags)
    unknown = set()
    for line in probe.stderr.splitlines():
        if "Unknown flag" in line:
            unknown.update(re.findall(r"--(\w+)", line.partition("XLA_FLAGS:")[2]))
    if not unknown:  # failed for another reason: set nothing rather than guess
        return {}
    return known_xla_flags({k: v for k, v in flags.items() if k not in unknown})


if _DECIDED not in os.environ:
    _caller = os.environ.get("XLA_FLAGS", "")
    _wanted = {k: v for k, v in _SUITE_XLA_FLAGS.items() if k not in _caller}
    _known = known_xla_flags(_wanted)
    os.environ[_DECIDED] = " ".join(sorted(_known)) or "none"
    for _flag, _value in _known.items():
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_flag}={_value}".strip()

# Modules whose tests share one expensive module-scoped fixture: all on one worker.
WHOLE_MODULES = ("test_latent.py", "test_sample_cli.py")


def _protocol_case_ids() -> tuple[str, ...]:
    from test_protocol import CASES  # noqa: PLC0415 (only the controller schedules)

    return tuple(sorted((case[0] for case in CASES), key=len, reverse=True))


def scope_of(nodeid: str, case_ids: tuple[str, ...]) -> str:
    """The schedule's unit of a test: its module for `WHOLE_MODULES`, its case for the
    protocol table (whose `case` fixture is built once per case and worker), else itself."""
    path, _, name = nodeid.partition("::")
    if path.endswith(WHOLE_MODULES):
        return path
    if path.endswith("test_protocol.py") and "[" in name:
        params = name[name.index("[") + 1 : name.rindex("]")]
        for case in case_ids:  # longest first: ids may extend one another
            if params == case or params.startswith(case + "-"):
                return f"{path}::{case}"
    return nodeid


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415

    case_ids = _protocol_case_ids()

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, case_ids)

    return Scheduling(config, log)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The reliability tests' uninterrupted smoke run (`smoke_runs.pristine_run`): one per
    module that uses it, copied by each test that changes it (`smoke_runs.copy_run`)."""
    from smoke_runs import pristine_run  # noqa: PLC0415 (jax after the settings above)

    return pristine_run(tmp_path_factory.mktemp("pristine") / "run")


def pytest_unconfigure(config):
    """The run that made the cache removes it (the workers inherited it, not made it)."""
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

"""`python -m jaxar.cli.train` with a fault injected: run by tests/test_faults.py.

  python tests/fault_cli.py FAULT N [CLI ARGS...]

FAULT is where an OSError is raised from the N-th call on (1-based):
  checkpoint_ro    a checkpoint save (EROFS: the directory turned read-only)
  checkpoint_full  a checkpoint save (ENOSPC: the disk is full)
  metrics          a metrics write (ENOSPC)
  data             reading a training batch (EIO)
"""

from __future__ import annotations

import errno
import functools
import os
import runpy
import sys

import orbax.checkpoint as ocp

from jaxar.data import pipeline
from jaxar.training import reporting

FAULTS = {
    "checkpoint_ro": (ocp.CheckpointManager, "save", errno.EROFS),
    "checkpoint_full": (ocp.CheckpointManager, "save", errno.ENOSPC),
    "metrics": (reporting.MetricsWriter, "write", errno.ENOSPC),
    "data": (pipeline.TrainIterator, "__next__", errno.EIO),
}


def inject(fault: str, first_failing_call: int) -> None:
    owner, name, code = FAULTS[fault]
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= first_failing_call:
            raise OSError(code, f"{os.strerror(code)} (injected by tests/fault_cli.py)")
        return original(*args, **kwargs)

    setattr(owner, name, failing)


if __name__ == "__main__":
    fault, first, *cli_args = sys.argv[1:]
    inject(fault, int(first))
    sys.argv = ["jaxar.cli.train", *cli_args]
    runpy.run_module("jaxar.cli.train", run_name="__main__", alter_sys=True)

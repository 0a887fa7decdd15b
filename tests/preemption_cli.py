"""`python -m jaxar.cli.train` whose checkpoint writes can be held open: run by
tests/test_preemption.py.

  python tests/preemption_cli.py MARKER N SECONDS [CLI ARGS...]

The N-th checkpoint (1-based; 0: none) completes its write and then waits SECONDS
before orbax renames its temporary directory into place; MARKER is created when it
starts waiting, so the test can signal the trainer in the middle of that write.
"""

from __future__ import annotations

import asyncio
import functools
import runpy
import sys

from orbax.checkpoint._src.path import atomicity

from jaxar import files


def hold_finalize(marker: str, nth: int, seconds: float) -> None:
    original = atomicity.AtomicRenameTemporaryPath.finalize
    calls = [0]

    @functools.wraps(original)
    async def finalize(self, *args, **kwargs):
        if self._final_path.parent.name != "checkpoints":  # an item inside a checkpoint
            return await original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            # Atomically: the test reads the path as soon as the marker exists.
            files.write_text(marker, str(self.get()))
            await asyncio.sleep(seconds)
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


if __name__ == "__main__":
    marker, nth, seconds, *cli_args = sys.argv[1:]
    hold_finalize(marker, int(nth), float(seconds))
    sys.argv = ["jaxar.cli.train", *cli_args]
    runpy.run_module("jaxar.cli.train", run_name="__main__", alter_sys=True)

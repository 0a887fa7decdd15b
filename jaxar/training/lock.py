"""One writer per workdir: an exclusive `flock` on `WORKDIR/.lock`, held while training.

The operating system releases the lock when its process ends, however it ends
(SIGKILL included), so the lock of a dead process is taken over automatically;
the file itself stays (it names the last holder). The lock is the file's inode, so
its text (`pid host`) is written in place rather than by `jaxar.files`' rename, which
would give a second run another inode to lock; a write that fails (a full disk) is a
ValueError, and a lock file this run created is removed again. With several processes only
process 0 takes the lock, and every process learns whether it got it, so a
refused multi-process run stops on every process at once instead of leaving the
others waiting in a collective.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pathlib
import socket

import jax
import numpy as np

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class WorkdirLock:
    """Holds `workdir/.lock` from `acquire` until `release` (or the process's end)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock (process 0) or learns that process 0 took it; a ValueError
        naming the holder if another process holds it."""
        holder = None
        if jax.process_index() == 0:
            holder = self._try_lock()
        if jax.process_count() > 1:  # every process stops if process 0 was refused
            from jax.experimental import multihost_utils  # noqa: PLC0415

            refused = multihost_utils.broadcast_one_to_all(np.int32(holder is not None))
            if int(refused) and holder is None:
                holder = "another run (seen by process 0)"
        if holder is not None:
            raise ValueError(
                f"--workdir {str(self.path.parent)!r} is in use: {holder} holds "
                f"{self.path} and trains into it. Wait for it to finish, or use another --workdir"
            )
        return self

    def _try_lock(self) -> str | None:
        """None if this process now holds the lock, else a description of the holder."""
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"--workdir: cannot create the lock file {self.path}: "
                             f"{err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            return f"process {text[0]} on {text[1]}" if len(text) >= 2 else "another process"
        except OSError as err:  # a file system without locks: train, but say so
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("cannot lock %s (%s): nothing stops a second run from writing "
                        "into this workdir", self.path, err)
            return None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            os.fsync(fd)
        except OSError as err:  # a full disk: nothing of this run stays
            if created:
                self.path.unlink(missing_ok=True)
            os.close(fd)
            raise ValueError(f"--workdir: cannot write the lock file {self.path}: "
                             f"{err.strerror or err}") from None
        self._fd = fd
        return None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (a file system without locks: never)."""
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

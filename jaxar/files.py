"""Writing output files so that a reader never sees half of one.

Every file jaxar writes for a user (images, JSON summaries, scores, compressed files,
indexes, the workdir lock) goes through `atomic_write`: the bytes go to a temporary file
beside the destination, are flushed to disk, and replace the destination in one
`os.replace`. A full disk, a signal or an exception while writing leaves the previous
file as it was and no temporary file behind. `check_output` refuses a destination that
cannot be written before any work is done.

Imports nothing from jaxar, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Opens a temporary file beside `path`; on a clean exit it replaces `path`.

    On an exception (including KeyboardInterrupt and OSError from a full disk) the
    temporary file is removed and `path` is untouched. `mode` is "wb" or "w".
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`path` holds exactly `data`, or (on failure) what it held before."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`path` holds exactly `text`, or (on failure) what it held before."""
    with atomic_write(path, "w") as f:
        f.write(text)


def check_output(
    path: str | os.PathLike, flag: str, suffixes: tuple[str, ...] = ()
) -> pathlib.Path:
    """The destination of an output, refused before any work with a ValueError naming
    `flag` when it is a directory, its folder does not exist or is not writable, or its
    suffix is not one of `suffixes` (when given)."""
    path = pathlib.Path(path)
    if str(path) == "" or path.is_dir():
        raise ValueError(f"{flag} must name a file, got the directory {str(path)!r}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} must end in one of {', '.join(suffixes)}, got {str(path)!r}")
    parent = path.parent if str(path.parent) else pathlib.Path(".")
    if not parent.is_dir():
        raise ValueError(f"{flag}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag}: {str(path)!r} is not writable")
    return path

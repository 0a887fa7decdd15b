"""JAX's persistent compilation cache for the command-line tools: a repeated or resumed
run loads its compiled programs from disk instead of compiling them again.

`enable()` is called by `jaxar-train` and `jaxar-sample` before anything compiles. The
cache directory is, in this order of precedence:

  JAX_COMPILATION_CACHE_DIR   JAX's own setting, left as it is when set;
  JAXAR_COMPILATION_CACHE     a directory, or "off" (also "", "0", "none") to disable;
  $XDG_CACHE_HOME/jaxar/xla   the default (~/.cache/jaxar/xla).

JAX writes each entry to a temporary file and renames it, so processes that share the
directory (several runs, the processes of one multi-process run) may read and write it
at once. Programs of any compile time are cached unless
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise (JAX's default, 1 s, would
leave the small programs of a run to be compiled again on every start).

Imports nothing from jaxar.
"""

from __future__ import annotations

import logging
import os
import pathlib

import jax

log = logging.getLogger(__name__)

ENV = "JAXAR_COMPILATION_CACHE"
OFF = ("", "off", "0", "none", "false", "no")


def default_directory() -> pathlib.Path:
    """`$XDG_CACHE_HOME/jaxar/xla`, `~/.cache/jaxar/xla` without XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxar" / "xla"


def directory(setting: str | None = None) -> pathlib.Path | None:
    """The cache directory `enable(setting)` uses, or None when the cache is off.

    `setting` (a directory or "off") stands for JAXAR_COMPILATION_CACHE; a
    JAX_COMPILATION_CACHE_DIR in the environment wins over both.
    """
    jax_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if jax_dir:
        return pathlib.Path(jax_dir)
    value = os.environ.get(ENV) if setting is None else setting
    if value is None:
        return default_directory()
    if value.strip().lower() in OFF:
        return None
    return pathlib.Path(value).expanduser()


def enable(setting: str | None = None) -> pathlib.Path | None:
    """Turns JAX's persistent compilation cache on (see the module docstring); returns
    its directory, or None when it is off or its directory cannot be created (then a
    warning is logged and everything compiles as without a cache)."""
    path = directory(setting)
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("compilation cache off: cannot create %s (%s); set %s to another "
                    "directory or to 'off'", path, err, ENV)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path

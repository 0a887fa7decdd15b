"""Loading experiment configs: `path/to/experiment.py[:variant]` -> ConfigDict."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Imports `path` and returns `get_config(variant)` (`get_config()` when no variant)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"config must be 'path/to/file.py[:variant]', got {spec!r}")
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"jaxar_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg)")
    return module.get_config(variant) if variant else module.get_config()

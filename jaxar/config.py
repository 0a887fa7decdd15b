"""Experiment configs: loading `path/to/experiment.py[:variant]`, and validating one.

`validate(cfg)` is strict: the keys of `jaxar.settings.base_config()` are the
schema of every section but `model` (whose keys are the chosen model's fields, see
`jaxar.models.configs`), so an unknown key is a ValueError that names it, lists the
valid ones and asks "did you mean" when one is close; then every value is checked for
its type, its range and its relations to others, before anything is compiled or
written. Keys a config leaves out take their defaults (`jaxar.settings`). Validation
only checks: the code reads the typed `jaxar.settings.Settings.of(cfg)`.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import ml_collections

from jaxar import models, settings
from jaxar.data import pipeline
from jaxar.models import configs


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Imports `path` and returns `get_config(variant)` (`get_config()` when no variant).

    Every way a config file can fail is a one-line ValueError naming the file and what is
    wrong: missing, not a file, a syntax error or an exception while importing it, no
    `get_config`, a `get_config` that raises (its message, e.g. an unknown variant) or
    returns anything but a ConfigDict. The original exception is chained (`__cause__`).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"config must be 'path/to/file.py[:variant]', got {spec!r}")
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.exists():
        raise ValueError(f"config file {path!r} does not exist")
    if not file.is_file():
        raise ValueError(f"config file {path!r} is not a file")
    module_spec = importlib.util.spec_from_file_location(f"jaxar_config_{file.stem}", file)
    if module_spec is None:  # a suffix Python cannot import
        raise ValueError(f"config file {path!r} is not a Python file (.py)")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # anything the file's code raises, in one line
        raise ValueError(f"config file {path!r} cannot be loaded: {_one_line(err)}") from err
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"config file {path!r} defines no get_config(arg) function")
    call = f"get_config({variant!r})" if variant else "get_config()"
    try:
        cfg = get_config(variant) if variant else get_config()
    except Exception as err:
        raise ValueError(f"config file {path!r}: {call} failed: {_one_line(err)}") from err
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ValueError(f"config file {path!r}: {call} must return an "
                         f"ml_collections.ConfigDict, got {type(cfg).__name__}")
    return cfg


def _one_line(err: BaseException) -> str:
    """`err` as one line: its type (unless a ValueError) and its message, whitespace
    collapsed (a SyntaxError's message names the file and the line)."""
    message = " ".join(str(err).split())
    if type(err) is ValueError and message:
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


# data.num_classes, read by "synthetic", must match the classes other sources declare:
# `jaxar.data.create_datasets` checks it.
_EVERY_STEPS = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "sample_every_steps")
_MISSING = object()


def validate(cfg: ml_collections.ConfigDict, workdir=None) -> None:
    """Checks every key and value of a training config (and `workdir`, when given).

    Raises a one-line ValueError naming the first bad key, e.g.
    `train.ema_decay must lie in [0, 1), got 1.5`. Builds the model (a dataclass,
    nothing compiled) to check `cfg.model`.
    """
    if isinstance(workdir, str) and not workdir.strip():
        raise ValueError("--workdir must name a directory, got an empty path")
    schema = settings.base_config()
    _check_keys("", cfg, schema)
    for section in ("data", "train", "eval", "mesh"):
        if section in cfg:
            if not isinstance(cfg[section], ml_collections.ConfigDict | dict):
                raise ValueError(f"{section} must be a config section, got {cfg[section]!r}")
            _check_keys(section, cfg[section], schema[section])
    get = lambda key: _lookup(cfg, key)
    _check_int("seed", get("seed"), 0)
    if get("seed") is not _MISSING and get("seed") >= 2**32:  # grain's shuffle seed
        raise ValueError(f"seed must be an int in [0, 2**32), got {get('seed')!r}")
    _check_data(cfg, get)
    _check_train(get)
    for key in ("batch_size", "ensemble_masks"):
        _check_int(f"eval.{key}", get(f"eval.{key}"), 1, none_ok=key == "batch_size")
    for key in ("data", "fsdp"):
        if get(f"mesh.{key}") is not _MISSING:
            settings.check_mesh_size(key, get(f"mesh.{key}"))
    _check_int("mesh.fsdp_min_size", get("mesh.fsdp_min_size"), 0)
    if "model" in cfg:
        model = models.build_model(cfg)
        members = get("eval.ensemble_masks")
        if members is not _MISSING and members > model.ensemble_size:
            raise ValueError(
                f"eval.ensemble_masks must lie in [1, {model.ensemble_size}] for model "
                f"{cfg.model.name!r} (its test-time ensemble's size), got {members}"
            )


def _check_keys(section: str, node, schema) -> None:
    """Refuses any key of `node` that `schema` (the base config, or one of its sections)
    lacks; checks the type of each key of a section."""
    valid = list(schema.keys())
    for key in node.keys():
        if key not in valid:
            raise configs.unknown_key(section, key, valid)
        if section:
            _check_type(f"{section}.{key}", node[key], schema, key)


def _check_type(name: str, value, schema, key: str) -> None:
    """`value` must have the type of the base config's `key` (None: only for placeholders)."""
    kind = schema.get_type(key)
    if value is None:
        if schema[key] is None:  # unset: the default (`jaxar.settings`)
            return
        raise ValueError(f"{name} must be set, got None")
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: settings.is_int,
        float: lambda v: settings.is_int(v) or isinstance(v, float),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, tuple | list),
    }.get(kind, lambda v: True)
    if not ok(value):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise ValueError(f"{name} must be {article} {kind.__name__}, got {value!r}")


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node




def _check_int(name: str, value, low: int, none_ok: bool = False) -> None:
    if value is _MISSING or (none_ok and value is None):
        return
    if not settings.is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_real(name: str, value, low, high, *, low_open=False, high_open=False) -> None:
    """A finite number with `low <= value <= high` (strict on an open side; None: no bound)."""
    if value is _MISSING:
        return
    ok = (settings.is_int(value) or isinstance(value, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is None and high is None:
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if high is None:
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def _check_train(get) -> None:
    for key in ("num_steps", "batch_size", "init_batch_size", "max_checkpoints",
                "grad_accum_steps", *_EVERY_STEPS):
        _check_int(f"train.{key}", get(f"train.{key}"), 1)
    _check_int("train.num_samples", get("train.num_samples"), 0)  # 0: no preview images
    _check_real("train.learning_rate", get("train.learning_rate"), 0, None, low_open=True)
    _check_real("train.lr_decay", get("train.lr_decay"), 0, 1, low_open=True)
    for key in ("b1", "b2", "ema_decay"):
        _check_real(f"train.{key}", get(f"train.{key}"), 0, 1, high_open=True)
    _check_real("train.grad_clip", get("train.grad_clip"), None, None)
    if get("train.max_bpd") is not _MISSING:
        settings.check_max_bpd(get("train.max_bpd"))
    batch, accum = get("train.batch_size"), get("train.grad_accum_steps")
    if batch is not _MISSING and accum is not _MISSING and batch % accum:
        raise ValueError(
            f"train.batch_size={batch} must be divisible by train.grad_accum_steps={accum}"
        )
    if get("train.compute_dtype") is not _MISSING:
        settings.check_compute_dtype(get("train.compute_dtype"))


def _check_data(cfg, get) -> None:
    source = get("data.source")
    if source is not _MISSING and source not in pipeline.SOURCES:
        raise ValueError(f"data.source must be one of {list(pipeline.SOURCES)}, got {source!r}")
    shape = get("data.shape")
    if shape is not _MISSING and (
            not isinstance(shape, tuple | list) or not shape
            or not all(settings.is_int(d) and d > 0 for d in shape)):
        raise ValueError(f"data.shape must be a non-empty tuple of positive ints, got {shape!r}")
    _check_int("data.num_levels", get("data.num_levels"), 2)
    for key in ("num_train", "num_test"):
        _check_int(f"data.{key}", get(f"data.{key}"), 1, none_ok=True)
    _check_int("data.num_classes", get("data.num_classes"), 0)
    _check_int("data.num_workers", get("data.num_workers"), 0, none_ok=True)
    _check_int("data.prefetch", get("data.prefetch"), 1)
    _check_real("data.test_fraction", get("data.test_fraction"), 0, 1, low_open=True,
                high_open=True)
    defaults = settings.DataSettings()
    for key, only in settings.SOURCE_KEYS.items():
        value = get(f"data.{key}")
        if source is not _MISSING and value is not _MISSING and source not in only \
                and value != getattr(defaults, key):
            readers = " or ".join(repr(o) for o in only)
            raise ValueError(
                f"data.{key} is read only with data.source={readers}, got data.{key}={value!r} "
                f"with data.source={source!r}"
            )
    image_shape = get("data.image_shape")
    shown = shape if image_shape in (None, _MISSING) else image_shape
    if image_shape not in (None, _MISSING) and shape is not _MISSING and (
            not all(settings.is_int(d) and d > 0 for d in image_shape)
            or math.prod(image_shape) != math.prod(shape)):
        raise ValueError(
            f"data.image_shape must be positive ints with as many elements as data.shape "
            f"{tuple(shape)}, got {image_shape!r}"
        )
    if shown is not _MISSING and (len(shown) > 3 or len(shown) == 3 and shown[-1] > 4):
        raise ValueError(
            f"data.shape {tuple(shown)} cannot be shown as a sample grid (at most 3 axes and "
            f"4 channels): set data.image_shape, e.g. (height, width, 1)"
        )

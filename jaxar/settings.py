"""The schema and defaults of a config's `seed`, `data`, `train`, `eval` and `mesh`.

Each setting is a field of a frozen dataclass below, whose default is its only
default: `base_config()` (the ConfigDict every experiment starts from, and the schema
`jaxar.config.validate` checks keys and types against) is built from these fields,
and `Settings.of(cfg)` is the typed, frozen view the code reads, with every key a
config leaves out at its default. The `model` section is the chosen model's
dataclass (`jaxar.models.configs`); only the keys every experiment shares are here.

The value checks that both `jaxar.config.validate` and a reader (for API callers
that skip validation) need are written once here.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

# `model` keys every experiment sets, with their defaults: a model that does not read
# one accepts it only at this value (`jaxar.models.configs`). `model.name` picks the family.
MODEL_SHARED = {"num_classes": 0, "ordering": "raster"}
# The names `train.compute_dtype` accepts (`jaxar.training.precision` maps them to dtypes).
COMPUTE_DTYPES = ("float32", "bfloat16")
# data keys read by one data.source only: any other value than the default is refused
# with another source (`jaxar.config.validate`).
SOURCE_KEYS = {"path": ("folder", "codes"), "labels_from_subfolders": ("folder",),
               "test_fraction": ("folder",), "tfds_dir": ("tfds",), "level": ("codes",)}


class _Section:
    """A config section as a frozen dataclass: `of(node)` reads it from a ConfigDict."""

    @classmethod
    def of(cls, node: Mapping | None):
        """The settings `node` (a config section; None: none) holds, its missing keys at
        their defaults and lists as tuples. Values are not checked here:
        `jaxar.config.validate` checks them."""
        node = {} if node is None else node
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in node:
                value = node[field.name]  # resolves FieldReferences
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DataSettings(_Section):
    source: str = "embedded"  # embedded | tfds | folder | synthetic | codes (+ audio)
    name: str = "mnist"
    shape: tuple[int, ...] = (28, 28, 1)
    num_levels: int = 2  # 8-bit pixels are reduced as x * num_levels // 256
    tfds_dir: str | None = None
    num_train: int | None = None  # use only the first N examples
    num_test: int | None = None
    # data.source="folder": the image folder (jaxar/data/image_folder.py); "codes": the
    # workdir of a trained VQ-VAE run, whose "top" or "bottom" code maps data.level picks.
    path: str = ""
    level: str = "top"
    labels_from_subfolders: bool = False
    test_fraction: float = 0.1
    # Label classes of data.source="synthetic" (0: no labels); other sources declare theirs.
    num_classes: int = 0
    # How sample grids show an event, e.g. (28, 28, 1) for sequences of 784; None: as is.
    image_shape: tuple[int, ...] | None = None
    # grain worker processes reading training batches (0: in this process); None: 0 on
    # CPU, else half the host's cores, at most 8. Each reads data.prefetch batches ahead.
    num_workers: int | None = None
    prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class TrainSettings(_Section):
    num_steps: int = 1000
    batch_size: int = 64  # global, split over all devices and hosts
    learning_rate: float = 1e-3
    lr_decay: float = 1.0  # multiplied into the learning rate every step
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float = 1.0  # global-norm clipping; <= 0 disables it
    ema_decay: float = 0.999  # Polyak averaging of the params used for eval and samples
    init_batch_size: int = 16  # examples for (data-dependent) initialization
    log_every_steps: int = 50
    eval_every_steps: int = 500
    checkpoint_every_steps: int = 500
    sample_every_steps: int = 1000
    num_samples: int = 16  # preview images per sample_every_steps; 0 writes none
    max_checkpoints: int = 3
    # Micro-batches per step: the global batch is cut into this many pieces whose
    # gradients are averaged, for batches larger than the devices' memory.
    grad_accum_steps: int = 1
    # "bfloat16": the network computes in bf16 on float32 params and optimizer
    # state; likelihoods and evaluation stay float32.
    compute_dtype: str = "float32"
    # Divergence guard: training stops when the loss exceeds this many bits/dim (inf: never);
    # None: 8 x log2(data.num_levels), eight times a uniform model's loss.
    max_bpd: float | None = None


@dataclasses.dataclass(frozen=True)
class EvalSettings(_Section):
    # Global, rounded up to a multiple of the devices; None: train.batch_size.
    batch_size: int | None = None
    ensemble_masks: int = 1  # MADE: average p(x) over this many mask sets at test time


@dataclasses.dataclass(frozen=True)
class MeshSettings(_Section):
    # Devices as a (data, fsdp) mesh; -1 takes all the devices left. The batch is split
    # over every device; fsdp > 1 also splits params and optimizer state (leaves of at
    # least fsdp_min_size elements) over the fsdp axis, for models too large to replicate.
    data: int = -1
    fsdp: int = 1
    fsdp_min_size: int = 2**14


SECTIONS = {"data": DataSettings, "train": TrainSettings, "eval": EvalSettings,
            "mesh": MeshSettings}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything but `model` of a config, typed: `Settings.of(cfg)`."""

    seed: int = 0
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    mesh: MeshSettings = MeshSettings()

    @classmethod
    def of(cls, cfg: Mapping) -> "Settings":
        """The settings of config `cfg`, each key it leaves out at its default."""
        sections = {name: section.of(cfg[name] if name in cfg else None)
                    for name, section in SECTIONS.items()}
        return cls(seed=cfg["seed"] if "seed" in cfg else cls.seed, **sections)


def _placeholder_type(annotation) -> type:
    """The ConfigDict type of a field annotated `X | None` or `tuple[...]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        annotation = args[0]
    return typing.get_origin(annotation) or annotation


def base_config() -> ml_collections.ConfigDict:
    """The config every experiment starts from: every setting at its default."""
    cfg = ml_collections.ConfigDict()
    cfg.seed = Settings.seed
    cfg.model = ml_collections.ConfigDict({"name": "", **MODEL_SHARED})
    for name, section in SECTIONS.items():
        node = ml_collections.ConfigDict()
        hints = typing.get_type_hints(section)
        for field in dataclasses.fields(section):
            if field.default is None:  # unset: typed so that overrides are checked
                node[field.name] = config_dict.placeholder(_placeholder_type(hints[field.name]))
            else:
                node[field.name] = field.default
        cfg[name] = node
    return cfg


def check_compute_dtype(name: Any) -> None:
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"train.compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {name!r}"
        )


def check_max_bpd(value: Any) -> None:
    """None: the trainer's default; inf: no limit."""
    if value is not None and not (
            (is_int(value) or isinstance(value, float)) and value > 0):
        raise ValueError(f"train.max_bpd must be a number > 0 (inf: no limit) or None, "
                         f"got {value!r}")


def check_mesh_size(key: str, value: Any) -> None:
    """`mesh.data` or `mesh.fsdp`: a positive int or -1."""
    if not is_int(value) or (value < 1 and value != -1):
        raise ValueError(f"mesh.{key} must be a positive int or -1 (all devices), got "
                         f"{value!r}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""The 6-step PixelCNN smoke run that the reliability tests start from (checkpoints 3 and
6), shared by their modules; `tests/conftest.py` serves it as the `pristine` fixture."""

from __future__ import annotations

import pathlib
import shutil

import jax

import jaxar
from jaxar.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke(data: dict | None = None, **train_overrides):
    """`experiments/pixelcnn_mnist.py:smoke` with `data` and `train` keys overridden."""
    cfg = jaxar.load_config(str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke"))
    cfg.data.update(data or {})
    cfg.train.update(train_overrides)
    return cfg


def pristine_run(workdir: pathlib.Path):
    """An uninterrupted smoke run in `workdir`: (workdir, its final state on the host)."""
    state = train.train_and_evaluate(smoke(), workdir)
    return workdir, jax.device_get(state)


def copy_run(pristine, tmp_path) -> pathlib.Path:
    """A copy of the pristine run's workdir to train, damage or read in `tmp_path`."""
    return pathlib.Path(shutil.copytree(pristine[0], tmp_path / "run"))

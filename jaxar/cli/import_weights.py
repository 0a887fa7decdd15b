"""Imports the original authors' released TensorFlow weights into a jaxar workdir.

  jaxar-import openai-pixelcnn-pp params_cifar.ckpt --workdir runs/pixelcnn_pp_released
  jaxar-import neocxi-pixelsnail cifar/model.ckpt-NNN --workdir runs/pixelsnail_released
  jaxar-sample --workdir runs/pixelcnn_pp_released --num 16 --out samples.png

The checkpoint is a V1 file or a V2 prefix (`jaxar.tf_checkpoint`). Its Polyak averages
(what the original code evaluated and sampled with) become both the params and the EMA
params of a step-0 train state, saved with the trainer's checkpointer beside the
config (`config.json`), so `jaxar-sample`, `jaxar-eval`, `checkpoint.load_run` and
`jaxar-train` read the workdir like any run's. Its data position is `train.FRESH_DATA`
(no data read yet): `jaxar-train --config <the same config> --workdir <it>` with any
`--config.data.*` and `--config.train.batch_size` fine-tunes from the released weights,
reading its data from the start. The config is the
source's released one (`experiments/pixelcnn_pp_cifar10.py:paper`; for PixelSNAIL
`experiments/pixelsnail_cifar10.py:paper` or `:imagenet32`, whichever the shapes
fit), or `--config path.py[:variant]`; every tensor's shape is checked against it
first (`jaxar.models.released`). Bad input (an unknown source, a file that is not such
a checkpoint, a non-empty workdir, another architecture) ends with one line on stderr
and exit code 2, and nothing is written: the workdir appears, whole, only at the end.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxar import cli, config, files, models, tf_checkpoint
from jaxar.models import common, released
from jaxar.training import checkpoint, train

# Source name -> (model family, the released configs to try, in order).
SOURCES = {
    "openai-pixelcnn-pp": ("pixelcnn_pp", ("experiments/pixelcnn_pp_cifar10.py:paper",)),
    "neocxi-pixelsnail": ("pixelsnail", ("experiments/pixelsnail_cifar10.py:paper",
                                         "experiments/pixelsnail_cifar10.py:imagenet32")),
}
_REPO = pathlib.Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser("jaxar-import", __doc__)
    p.add_argument("source", help=f"whose weights: {', '.join(SOURCES)}")
    p.add_argument("checkpoint", help="the TensorFlow checkpoint: a V1 file or a V2 prefix")
    p.add_argument("--workdir", required=True, help="new (or empty) directory to write")
    p.add_argument("--config", default=None,
                   help="path.py[:variant] instead of the source's released configs")
    return p


def _load_config(spec: str):
    path, _, variant = spec.partition(":")
    if not pathlib.Path(path).is_file() and (_REPO / path).is_file():
        spec = f"{_REPO / path}:{variant}" if variant else str(_REPO / path)
    return config.load_config(spec)


def abstract_params(model):
    """The model's parameter shapes (nothing computed; traced once per model)."""
    return common.abstract_variables(model)["params"]


def fitting_config(ckpt, family: str, specs):
    """(spec, cfg, model, abstract params) of the first config whose architecture the
    checkpoint fits; a ValueError naming the first tensor that fits none."""
    errors = []
    for spec in specs:
        cfg = _load_config(spec)
        config.validate(cfg)
        if cfg.model.name != family:
            raise ValueError(f"--config {spec}: model.name is {cfg.model.name!r}, the source's "
                             f"weights are {family!r}")
        model = models.build_model(cfg)
        shapes = abstract_params(model)
        try:
            released.check(ckpt, model.released_layers(), shapes)
        except ValueError as err:
            errors.append(f"{spec}: {err}" if len(specs) > 1 else str(err))
            continue
        return spec, cfg, model, shapes
    raise ValueError(errors[0] if len(errors) == 1 else
                     "fits none of the released configs; " + "; ".join(errors))


def import_weights(source: str, path, workdir, config_spec: str | None = None) -> str:
    """Writes the workdir; returns the summary line. ValueError for bad input (nothing
    written)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    workdir = pathlib.Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ValueError(f"--workdir {str(workdir)!r} exists and is not an empty directory")
    parent = workdir.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"--workdir: the folder {str(parent)!r} does not exist")
    family, specs = SOURCES[source]
    ckpt = tf_checkpoint.TFCheckpoint(path)
    spec, cfg, model, shapes = fitting_config(
        ckpt, family, (config_spec,) if config_spec else specs)
    params = released.load(ckpt, model.released_layers(), shapes)
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    _, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))  # as the trainer's init_state
    state = train.state_from_variables(cfg, {"params": jax.tree.map(jnp.asarray, params)}, rng)
    # Written beside the workdir and renamed into place: all of it or nothing.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{workdir.name}.importing-", dir=parent))
    try:
        ckpt_writer = checkpoint.Checkpointer(staging, max_to_keep=1)
        try:
            # No data read yet: fine-tuning (jaxar-train) reads its data from the start.
            ckpt_writer.save(0, state, train.FRESH_DATA, cfg)
        finally:
            ckpt_writer.close()
        files.write_text(staging / "config.json", cfg.to_json_best_effort(indent=2))
        if workdir.exists():
            workdir.rmdir()  # empty, checked above
        staging.rename(workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return (f"imported {source} ({ckpt.format.upper()} checkpoint {ckpt.path}, "
            f"{count:,} parameters, the Polyak averages) as {spec} into {workdir}")


def main(argv=None) -> int:
    """The `jaxar-import` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    return cli.run(parser, lambda: import_weights(args.source, args.checkpoint, args.workdir,
                                                  args.config))


if __name__ == "__main__":
    sys.exit(main())

"""VQ-VAE code maps as a data source: `data.source = "codes"`, `data.path = VQVAE_WORKDIR`.

A trained VQ-VAE run's train and test splits, encoded once into integer code maps
(`jaxar.training.codes` writes them into `<workdir>/codes/`), are served like images:
`data.level = "top"` gives the top code map `[N, h_top, w_top, 1]`, `"bottom"` the
bottom one with the top map of the same image as the batch's `"cond"` (what a bottom
prior is conditioned on). Labels are the images' labels. `data.shape` must be the code
map's shape and `data.num_levels` the codebook size K: codes are not reduced.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from jaxar import settings
from jaxar.data.sources import ArraySource

LEVELS = ("top", "bottom")
DIRECTORY = "codes"
META = "meta.json"


def split_file(workdir, split: str) -> pathlib.Path:
    """The file holding the codes of one split ("train" or "test") of a VQ-VAE run."""
    return pathlib.Path(workdir) / DIRECTORY / f"{split}.npz"


def read_meta(workdir) -> dict | None:
    """What the stored codes were encoded from (None: nothing stored yet)."""
    path = pathlib.Path(workdir) / DIRECTORY / META
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def codes_source(data, split: str) -> ArraySource:
    """The "train" or "test" split of the code maps described by `cfg.data`."""
    given = settings.DataSettings.of(data)
    level = given.level
    if level not in LEVELS:
        raise ValueError(f"data.level must be one of {LEVELS}, got {level!r}")
    path = split_file(given.path, split)
    meta = read_meta(given.path)
    if not given.path or meta is None or not path.is_file():
        raise ValueError(
            f"data.path={given.path!r} holds no encoded codes: it must be the "
            f"workdir of a trained VQ-VAE run (its codes are written there when a prior "
            f"first trains on it)"
        )
    with np.load(path) as stored:
        codes = {key: stored[key] for key in stored.files}
    num_codes = int(meta["num_codes"])
    if data.num_levels != num_codes:
        raise ValueError(
            f"data.num_levels={data.num_levels} must equal the codebook size {num_codes} of "
            f"the VQ-VAE in data.path (codes are not reduced)"
        )
    as_maps = lambda a: a.astype(np.int32)[..., None]  # [N, h, w, 1], as models read them
    cond = as_maps(codes["top"]) if level == "bottom" else None
    return ArraySource(as_maps(codes[level]), codes["labels"], int(meta["num_classes"]),
                       levels=num_codes, cond=cond)

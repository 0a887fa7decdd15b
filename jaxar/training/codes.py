"""Encoding a trained VQ-VAE run's data into code maps, once, for the priors trained on it.

`prepare(cfg)` is what a run with `data.source = "codes"` calls before it reads its data:
the VQ-VAE workdir in `data.path` gets `codes/train.npz`, `codes/test.npz` (top and
bottom code maps and labels of its own train and test splits) and `codes/meta.json`
(the checkpoint they come from). They are re-used while that workdir's newest
checkpoint stays the same and encoded again when it changes (training went on).
Process 0 encodes and writes; the files appear atomically (written aside, then renamed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxar import data, settings
from jaxar.data import codes as codes_data
from jaxar.training import checkpoint

ENCODE_BATCH = 256


def prepare(cfg) -> None:
    """Encodes the VQ-VAE run in `cfg.data.path` if `cfg.data.source == "codes"` and its
    stored codes are missing or stale; a ValueError if it is not a trained VQ-VAE run."""
    if cfg.data.source == "codes":
        encode_run(settings.DataSettings.of(cfg.data).path)


def checkpoint_fingerprint(workdir) -> dict:
    """The newest finished checkpoint of a run: its step and a hash of its files' names,
    sizes and modification times (what the stored codes are checked against)."""
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    steps = checkpoint.finished_steps(directory)
    if not steps:
        raise ValueError(f"data.path={str(workdir)!r} holds no checkpoint: train the VQ-VAE "
                         f"there first")
    step_dir = directory / str(steps[-1])
    digest = hashlib.sha256()
    for file in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(step_dir)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return {"step": steps[-1], "files": digest.hexdigest()}


def encode_run(workdir) -> dict:
    """The meta data of `workdir`'s stored codes, encoding them first if needed."""
    if not workdir:
        raise ValueError("data.path must name the workdir of a trained VQ-VAE run when "
                         "data.source='codes'")
    fingerprint = checkpoint_fingerprint(workdir)
    meta = codes_data.read_meta(workdir)
    if meta is not None and meta.get("checkpoint") == fingerprint and all(
            codes_data.split_file(workdir, s).is_file() for s in ("train", "test")):
        return meta
    if jax.process_index() == 0:
        meta = _encode(workdir, fingerprint)
    _sync("jaxar codes")
    return codes_data.read_meta(workdir)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


def _encode(workdir, fingerprint: dict) -> dict:
    cfg, model, variables, step = checkpoint.load_run(workdir, fingerprint["step"])
    if model.autoregressive:  # the one non-autoregressive family is the VQ-VAE
        raise ValueError(f"data.path={str(workdir)!r} is a {cfg.model.name!r} run, not a "
                         f"VQ-VAE run: it has no codes")
    train, test = data.load_splits(cfg)
    directory = pathlib.Path(workdir) / codes_data.DIRECTORY
    directory.mkdir(exist_ok=True)
    shapes = {}
    for split in (train, test):
        top, bottom, labels = encode_split(model, variables, split)
        shapes = {"top": list(top.shape[1:]), "bottom": list(bottom.shape[1:])}
        name = split.name.rsplit("/", 1)[-1]
        target = codes_data.split_file(workdir, name)
        aside = target.with_suffix(".tmp.npz")
        np.savez(aside, top=top, bottom=bottom, labels=labels)
        os.replace(aside, target)
    meta = {"checkpoint": fingerprint, "num_codes": model.num_codes,
            "num_classes": train.num_classes, "shapes": shapes, "image_shape":
            list(model.event_shape), "image_levels": model.num_levels}
    aside = directory / (codes_data.META + ".tmp")
    aside.write_text(json.dumps(meta, indent=2))
    os.replace(aside, directory / codes_data.META)
    print(f"encoded {len(train)} train and {len(test)} test images of {workdir} (step {step}) "
          f"into codes {shapes}", flush=True)
    return meta


def encode_split(model, variables, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top and bottom code maps (int16 `[N, h, w]`) and labels (int32 `[N]`) of every
    example of a data split, read once."""
    tops, bottoms, labels = [], [], []
    for start in range(0, len(split), ENCODE_BATCH):
        rows = np.arange(start, min(start + ENCODE_BATCH, len(split)))
        batch = split.get(rows)
        x = batch["x"]
        labels.append(batch["labels"])
        padded = np.zeros((ENCODE_BATCH, *x.shape[1:]), x.dtype)  # one shape: one compile
        padded[:len(rows)] = x
        top, bottom = encode_images(model, variables, jnp.asarray(padded))
        tops.append(np.asarray(top)[:len(rows)])
        bottoms.append(np.asarray(bottom)[:len(rows)])
    as_codes = lambda parts: np.concatenate(parts).astype(np.int16)
    return as_codes(tops), as_codes(bottoms), np.concatenate(labels)


@functools.partial(jax.jit, static_argnums=0)
def encode_images(model, variables, x):
    """The VQ-VAE's (top, bottom) code maps of images x (jitted)."""
    return model.apply(variables, x, method=model.encode)

"""Generation through a VQ-VAE's latent space: a top prior, a bottom prior, the decoder.

A latent pipeline is three trained runs: a VQ-VAE, a prior over its top code maps
(`data.source = "codes"`, `data.level = "top"`) and a prior over its bottom code maps
conditioned on the top ones (`data.level = "bottom"`, `model.cond_levels = K`), both
with `data.path` = the VQ-VAE's workdir. `load(bottom_workdir, top_workdir)` reads all
three; `generate` samples top codes, then bottom codes given them, and decodes;
`complete` encodes an image, keeps the codes of the known region, samples the others
(top first) and decodes.

    pipeline = jaxar.load_latent("runs/prior_bottom", "runs/prior_top")
    images = jaxar.generate_latent(pipeline, jax.random.key(0), 16, labels=None)
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxar import sampling, settings
from jaxar.training import checkpoint, codes


class Run(NamedTuple):
    cfg: Any
    model: Any
    variables: Any
    step: int


class Pipeline(NamedTuple):
    """The three runs of a latent pipeline (`load`)."""

    vqvae: Run
    top: Run
    bottom: Run


def _run(workdir, what: str) -> Run:
    try:
        return Run(*checkpoint.load_run(workdir))
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def _vqvae_dir(run: Run, what: str, level: str) -> pathlib.Path:
    data = run.cfg.data
    if data.get("source") != "codes" or settings.DataSettings.of(data).level != level:
        raise ValueError(f"{what} must be a prior trained on data.source='codes' with "
                         f"data.level={level!r}, got data.source={data.get('source')!r} "
                         f"data.level={data.get('level')!r}")
    return pathlib.Path(data.path).resolve()


def load(bottom_workdir, top_workdir) -> Pipeline:
    """The VQ-VAE, top prior and bottom prior of a latent pipeline; ValueError if the two
    priors are not over the same VQ-VAE's top and bottom codes."""
    bottom = _run(bottom_workdir, "--workdir (the bottom prior)")
    top = _run(top_workdir, "--top (the top prior)")
    vq_dir = _vqvae_dir(bottom, "--workdir", "bottom")
    if _vqvae_dir(top, "--top", "top") != vq_dir:
        raise ValueError(f"--top: the top prior is over the codes of {top.cfg.data.path}, the "
                         f"bottom prior over those of {bottom.cfg.data.path}: expected one VQ-VAE")
    if not bottom.model.cond_levels:
        raise ValueError("--workdir: the bottom prior is not conditioned on the top codes "
                         "(model.cond_levels = 0)")
    vqvae = _run(vq_dir, f"the VQ-VAE of the priors ({vq_dir})")
    if top.model.num_classes != bottom.model.num_classes:
        raise ValueError(f"the top prior has {top.model.num_classes} classes, the bottom "
                         f"prior {bottom.model.num_classes}: expected the same")
    return Pipeline(vqvae, top, bottom)


def _as_map(codes_BHW1) -> jax.Array:
    return jnp.asarray(codes_BHW1)[..., 0]


def generate(pipeline: Pipeline, key, num: int, labels=None, temperature: float = 1.0,
             method: str = "auto", known=None) -> np.ndarray:
    """`num` images `[num, H, W, C]` (ints in [0, the VQ-VAE's num_levels)).

    labels: `[num]` class labels for class-conditional priors. known: completion, a
    dict with "top" / "bottom" code maps `[num, h, w, 1]` and their "top_mask" /
    "bottom_mask" (True: keep), as `complete` builds it.
    """
    top_key, bottom_key = jax.random.split(key)
    known = known or {}
    top = sampling.sample(pipeline.top.model, pipeline.top.variables, top_key, num, labels,
                          temperature, known.get("top"), known.get("top_mask"), method=method)
    bottom = sampling.sample(pipeline.bottom.model, pipeline.bottom.variables, bottom_key, num,
                             labels, temperature, known.get("bottom"), known.get("bottom_mask"),
                             cond=top, method=method)
    vq = pipeline.vqvae
    return np.asarray(_decode(vq.model, vq.variables, _as_map(top), _as_map(bottom)))


@functools.partial(jax.jit, static_argnums=0)
def _decode(model, variables, top, bottom):
    return model.reconstruct_levels(model.apply(variables, top, bottom,
                                                method=model.decode_codes))


def code_masks(pipeline: Pipeline, keep_HWC: np.ndarray) -> dict[str, np.ndarray]:
    """Which codes of each level a completion keeps, `[h, w, 1]` bool: a code is kept when
    the block of pixels it stands for (its level's stride x stride footprint) lies in
    the kept region `keep_HWC`."""
    keep_HW = np.asarray(keep_HWC).all(axis=-1)
    masks = {}
    for level, run in (("top", pipeline.top), ("bottom", pipeline.bottom)):
        h, w = run.model.event_shape[:2]
        blocks = keep_HW.reshape(h, keep_HW.shape[0] // h, w, keep_HW.shape[1] // w)
        masks[level] = blocks.all(axis=(1, 3))[..., None]
    return masks


def complete(pipeline: Pipeline, key, image, keep_HWC, num: int, labels=None,
             temperature: float = 1.0, method: str = "auto") -> np.ndarray:
    """`num` completions `[num, H, W, C]` of `image` (`[1, H, W, C]` ints) in code space:
    its codes are kept where `code_masks` says so and the rest are sampled."""
    vq = pipeline.vqvae
    top, bottom = codes.encode_images(vq.model, vq.variables, jnp.asarray(image))
    known = {}
    masks = code_masks(pipeline, keep_HWC)
    for level, level_codes in (("top", top), ("bottom", bottom)):
        mask = masks[level]
        known[level] = np.repeat(np.asarray(level_codes, np.int32)[..., None], num, axis=0)
        known[f"{level}_mask"] = np.broadcast_to(mask, known[level].shape).copy()
    return generate(pipeline, key, num, labels, temperature, method, known)

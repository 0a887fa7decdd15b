"""Raster decoders of the convolutional image models, from a pixel's parameters.

`pixel_decoder` turns "the likelihood parameters at pixel (i, j), from caches"
into a `base.Decoder` that `jaxar.sampling` runs in raster order: one call per
channel (channel-group masks make channel c's parameters depend on the channels
before it: PixelCNN, Gated PixelCNN), or one call per pixel for a likelihood
over the pixel's channels whose network output does not see the pixel
(PixelCNN++, PixelSNAIL), with a block per image row for work done once per row.

`cache_decoder` serves models whose own `__call__` decodes a pixel when given
the "cache" collection of `jaxar.nn.cache` (every layer a cache layer or
pointwise: PixelCNN).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from jaxar.models import base
from jaxar.nn import cache


def pixel_decoder(model, state, pixel_params: Callable, start_row: Callable | None = None,
                  per_pixel: bool = False) -> base.Decoder:
    """A raster `base.Decoder` of an `[H, W, C]` model.

    pixel_params(state, x_BHWC, i, j) -> (parameters of pixel (i, j) `[B, ..., F]`, state):
      the model's output at that pixel given x, whose dimensions before the current
      one are written (later ones are zero or known values, which the model cannot see).
    start_row(state, x_BHWC, i) -> state: runs once before the first pixel of row i.
    """
    if not base.is_raster(model):
        raise ValueError(f"{type(model).__name__}'s pixel decoder needs raster ordering")
    _, width, channels = model.event_shape
    calls_per_pixel = 1 if per_pixel else channels
    group = channels if model.likelihood.groups_channels else 1
    if per_pixel and group != channels:
        raise ValueError("per_pixel decoding needs a likelihood over the pixel's channels")

    def image(x_flat_BD):
        return x_flat_BD.reshape(x_flat_BD.shape[0], *model.event_shape)

    def step(state, x_flat_BD, s):
        pixel, c = s // calls_per_pixel, s % calls_per_pixel
        params, state = pixel_params(state, image(x_flat_BD), pixel // width, pixel % width)
        params_BF = params.reshape(params.shape[0], -1, params.shape[-1])[:, c // group]
        return params_BF, state

    row_start = None
    if start_row is not None:
        row_start = lambda state, x_flat_BD, i: start_row(state, image(x_flat_BD), i)
    return base.Decoder(state, step, dims_per_step=channels // calls_per_pixel,
                        steps_per_block=width * calls_per_pixel, start_block=row_start)


def cache_decoder(model, variables, labels, cond, batch: int) -> base.Decoder:
    """The decoder of a model whose `__call__`, given `jaxar.nn.cache`'s "cache"
    collection, computes the cache's pixel only."""
    x_BHWC = jnp.zeros((batch, *model.event_shape), jnp.int32)

    def pixel_params(state, x_BHWC, i, j):
        decoding = {**variables, "cache": cache.at(state, i, j)}
        params, updates = model.apply(decoding, x_BHWC, labels, cond, mutable=["cache"])
        return params, updates["cache"]

    return pixel_decoder(model, cache.init(model, variables, x_BHWC, labels, cond), pixel_params)

"""Cached raster-order sampling for the convolutional models (their `cached_sampler`).

`raster_sample` walks the dimensions exactly as `jaxar.sampling`'s naive sampler
does (raster order, channel by channel, `sampling.draw` with the key of step t,
`sampling.write` keeping known values), but each step computes only the current
pixel through the layers' caches (`jaxar.nn.cache`) instead of the whole image. A
pixel is recomputed once per channel, since channel-group masks make channel c's
parameters depend on the channels before it.

A model plugs in through a `Steps`: its caches and how to compute a pixel's
parameters from them (and, optionally, what to do at the start of each row).
`pixelwise_steps` serves models whose own `__call__` decodes a pixel when given
the cache (every layer a `jaxar.nn.cache` layer or pointwise: PixelCNN); models
with another schedule (Gated PixelCNN's row-wise vertical stack,
`gated_pixelcnn_cache.steps`) write their own. `sample(steps_fn, ...)` is then
the model's `cached_sampler`. PixelCNN++ and PixelSNAIL, whose lower
resolutions and attention follow their own schedule, have their own decoders
(`pixelcnn_pp_cache`, `pixelsnail_cache`) on the same `jaxar.nn.cache` layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxar import sampling
from jaxar.nn import cache


def check_raster(model) -> None:
    """Raises ValueError unless the model generates in raster order (what the caches assume)."""
    order = sampling.generation_order(model)
    if not np.array_equal(order, np.arange(order.shape[0])):
        raise ValueError(
            f"method='cached' needs raster ordering for {type(model).__name__}; use method='naive'"
        )


class Steps(NamedTuple):
    """A model's incremental decoder, what `raster_sample` runs.

    pixel_params(state, x_BHWC, i, j) -> (parameters of pixel (i, j) `[B, ..., F]`, state):
      the model's output at that pixel given x, whose channels before the current
      one are written (later ones are zero or known values, which the masks hide).
    start_row(state, x_BHWC, i) -> state: runs once before the first pixel of row i.
    state: the initial caches, threaded through both.
    """

    state: Any
    pixel_params: Callable
    start_row: Callable | None = None


def raster_sample(model, key, temperature, known, known_mask, steps: Steps):
    """Samples `[B, H, W, C]` with `steps` (traceable; call it inside jit)."""
    batch, height, width, channels = known.shape
    known_flat = known.reshape(batch, -1)
    mask_flat = known_mask.reshape(batch, -1)
    group = channels if model.likelihood.groups_channels else 1

    def pixel_channel(i, k, carry):
        x_flat, state = carry
        j, c = k // channels, k % channels
        params, state = steps.pixel_params(state, x_flat.reshape(known.shape), i, j)
        params_BF = params.reshape(batch, -1, params.shape[-1])[:, c // group]
        dim = (i * width + j) * channels + c  # raster: the step is the dimension
        value = sampling.draw(model, key, dim, params_BF, x_flat, dim, temperature)
        return sampling.write(x_flat, dim, value, known_flat, mask_flat), state

    def row(i, carry):
        if steps.start_row is not None:
            x_flat, state = carry
            carry = x_flat, steps.start_row(state, x_flat.reshape(known.shape), i)
        return jax.lax.fori_loop(0, width * channels, functools.partial(pixel_channel, i), carry)

    x0 = jnp.where(mask_flat, known_flat, 0)
    x_flat, _ = jax.lax.fori_loop(0, height, row, (x0, steps.state))
    return x_flat.reshape(known.shape)


def sample(steps_fn, model, variables, key, labels, cond, temperature, known, known_mask):
    """A `cached_sampler`: `raster_sample` of `steps_fn(model, variables, labels, cond, known)`."""
    check_raster(model)
    return _sample(steps_fn, model, variables, key, labels, cond, temperature, known, known_mask)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sample(steps_fn, model, variables, key, labels, cond, temperature, known, known_mask):
    steps = steps_fn(model, variables, labels, cond, known)
    return raster_sample(model, key, temperature, known, known_mask, steps)


def pixelwise_steps(model, variables, labels, cond, x_BHWC) -> Steps:
    """`Steps` for models whose `__call__` decodes one pixel under `jaxar.nn.cache` (every
    layer a cache layer or pointwise, e.g. PixelCNN): the same `__call__` on the full
    image x computes the current pixel only."""

    def pixel_params(state, x_BHWC, i, j):
        decoding = {**variables, "cache": cache.at(state, i, j)}
        params, updates = model.apply(decoding, x_BHWC, labels, cond, mutable=["cache"])
        return params, updates["cache"]

    return Steps(cache.init(model, variables, x_BHWC, labels, cond), pixel_params)

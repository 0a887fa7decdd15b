"""Per-layer activation caches for exact incremental (pixel-by-pixel) decoding.

With raster causality a layer's output at pixel p depends only on its inputs at
positions <= p, so a sampler can compute every layer at the current pixel only,
from caches of the layers' past inputs (Ramachandran et al., 2017, "Fast
Generation for Convolutional Autoregressive Models"). The protocol, in the flax
collection "cache":

* `init(model, variables, *args)` runs the model once, abstractly, on full-size
  inputs with "cache" mutable: every layer that calls `neighbourhood` creates a
  `position` (int32 `[2]`, the pixel (i, j) being decoded) and, if its
  receptive field is more than the pixel, `inputs`: its input map zero-padded
  as its convolution pads it. All start at zero.
* `at(cache, i, j)` moves every layer to pixel (i, j) (or row i).
* Applying the model (or a decoder over its parameters) with that cache and
  "cache" mutable decodes one position: each layer's `neighbourhood` writes its
  input at the position into `inputs` and returns the padded window around it,
  and the layer runs its ordinary VALID convolution on the window, so its output
  is the position's only: `[B, 1, 1, O]`, or the row `[B, 1, W, O]` for layers
  that decode whole rows (a vertical stack).

A layer given its full-size input `[B, H, W, C]` while decoding cuts the window
from that input instead: that is how the image itself enters, so the values a
sampler wrote after the last pass at a pixel are never stale in a cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def neighbourhood(module, x_BHWC, above: int, left: int, right: int, whole_rows: bool = False):
    """The window a decoding layer convolves, or None when not decoding.

    Window: rows i - above .. i and columns j - left .. j + right of the layer's
    zero-padded input, `[B, above + 1, left + right + 1, C]`; with `whole_rows`,
    every column of the padded rows, `[B, above + 1, left + W + right, C]`.
    Outside decoding (no "cache" collection) it returns None and the layer runs
    on the whole map; while `init` builds the cache it creates this layer's
    variables and also returns None.
    """
    if module.has_variable("cache", "position"):
        return _window(module, x_BHWC, above, left, right, whole_rows)
    if module.is_mutable_collection("cache") and not module.is_initializing():
        module.variable("cache", "position", lambda: jnp.zeros((2,), jnp.int32))
        if above or left or right:
            batch, height, width, channels = x_BHWC.shape
            shape = (batch, height + above, width + left + right, channels)
            module.variable("cache", "inputs", jnp.zeros, shape, x_BHWC.dtype)
    return None


def _window(module, x_BHWC, above, left, right, whole_rows):
    i, j = module.get_variable("cache", "position")
    batch, height, width, channels = x_BHWC.shape
    col = 0 if whole_rows else j
    if not module.has_variable("cache", "inputs"):  # pointwise: the window is the position
        at_position = height == 1 and (whole_rows or width == 1)
        if at_position:
            return x_BHWC
        size = (batch, 1, width if whole_rows else 1, channels)
        return jax.lax.dynamic_slice(x_BHWC, (0, i, col, 0), size)
    inputs = module.variable("cache", "inputs")
    padded_h, padded_w = inputs.value.shape[1:3]
    if (height, width) == (padded_h - above, padded_w - left - right):  # the full map
        padded = jnp.pad(x_BHWC, ((0, 0), (above, 0), (left, right), (0, 0)))
    else:
        start = (0, above + i, left + col, 0)
        inputs.value = jax.lax.dynamic_update_slice(inputs.value, x_BHWC, start)
        padded = inputs.value
    size = (batch, above + 1, padded_w if whole_rows else left + right + 1, channels)
    return jax.lax.dynamic_slice(padded, (0, i, col, 0), size)


def init(model, variables, *args, **kwargs):
    """A zero cache for decoding `model` on inputs shaped like `args` (nothing is computed)."""

    def build(variables, args):
        _, state = model.apply(variables, *args, mutable=["cache"], **kwargs)
        return state["cache"]

    shapes = jax.eval_shape(build, variables, args)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def at(cache, i, j):
    """`cache` with every layer's position set to pixel (i, j)."""
    position = jnp.stack([jnp.asarray(i), jnp.asarray(j)]).astype(jnp.int32)

    def move(path, leaf):
        return position if getattr(path[-1], "key", None) == "position" else leaf

    return jax.tree_util.tree_map_with_path(move, cache)

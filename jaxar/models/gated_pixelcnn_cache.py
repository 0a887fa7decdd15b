"""Cached sampling for Gated PixelCNN: the vertical stack by rows, the horizontal stack by pixels.

The vertical stack at row r sees every pixel of rows <= r within its width, so
it can only run once row r is complete; the horizontal stack at (i, j) uses it
through a down-shift, i.e. at row i - 1. Hence, at the start of row i, `Decoder`
computes the whole vertical stack for row i - 1 (each layer from its cache of
the rows above, `jaxar.nn.cache` with whole rows) and keeps its down-shift
projections (`below`); then, for each pixel (and each channel of it), the
horizontal stack from its caches of the columns to the left plus column j of
`below`. Per sample that is H vertical-row passes and H * W * C horizontal-pixel
passes instead of H * W * C full-image passes.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.models import decoding
from jaxar.models.gated_pixelcnn import GatedPixelCNN
from jaxar.nn import cache, fast_conv, layers


class Decoder(GatedPixelCNN):
    """The model's layers, under the model's own (automatic) parameter names, run one
    phase at a time: "cond" (the upsampled conditioning map), "vertical" (one row of
    the vertical stack) or "horizontal" (one pixel of the horizontal stack and head).

    It restates `GatedPixelCNN.__call__` split in two: a change there needs the same
    change here, which `tests/test_cached_sampling.py` enforces (cached == naive).
    """

    @nn.compact
    def __call__(self, x, labels=None, cond=None, phase="horizontal", below=None, valid=None):
        if phase == "cond":
            return self._upsample_cond(cond, *self.event_shape[:2])
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        x_in = layers.scale_to_unit(x, self.num_levels)
        if phase == "vertical":
            return self._vertical_row(x_in, label_BK, cond, valid)
        return self._horizontal_pixel(x_in, label_BK, cond, below)

    def _vertical_row(self, x_in, label_BK, cond_B1WD, valid):
        """Down-shift projections `[B, 1, W, F]` of every layer's vertical stack at the
        cache's row, times `valid` (0 stands for the zeros above the first row)."""
        p, impl = self.features, self.conv_impl
        v = layers.VerticalStackConv(p, self.input_kernel_size, impl, name="VerticalStackConv_0")(
            x_in
        )
        conv_fn = fast_conv.conv_general_dilated_fn(impl)
        below = [nn.Conv(p, (1, 1), conv_general_dilated=conv_fn, name="Conv_0")(v * valid)]
        for i in range(self.num_layers):
            name = f"VerticalStackConv_{i + 1}"
            v_pre = layers.VerticalStackConv(2 * p, self.kernel_size, impl, name=name)(v)
            below.append(
                nn.Conv(2 * p, (1, 1), conv_general_dilated=conv_fn, name=f"Conv_{i + 1}")(
                    v_pre * valid
                )
            )
            if i + 1 < self.num_layers:
                v = layers.GatedActivation(impl, name=f"GatedActivation_{2 * i}")(
                    v_pre, label_BK, cond_B1WD
                )
        return below

    def _horizontal_pixel(self, x_in, label_BK, cond_B11D, below):
        """Likelihood parameters `[B, 1, 1, C, F]` of the cache's pixel."""
        p, groups, impl = self.features, self.num_groups, self.conv_impl
        h = layers.HorizontalStackConv(
            p, self.input_kernel_size, "A", groups, conv_impl=impl, name="HorizontalStackConv_0"
        )(x_in)
        h = h + below[0]
        skip = 0.0
        for i in range(self.num_layers):
            h_pre = layers.HorizontalStackConv(
                2 * p, self.kernel_size, "B", groups, out_blocks=2, conv_impl=impl,
                name=f"HorizontalStackConv_{i + 1}",
            )(h)
            h_pre = h_pre + below[i + 1]
            h_gated = layers.GatedActivation(impl, name=f"GatedActivation_{2 * i + 1}")(
                h_pre, label_BK, cond_B11D
            )
            skip = skip + self._named_1x1(self.head_features, 2 * i)(h_gated)
            h = h + self._named_1x1(p, 2 * i + 1)(h_gated)
        out = self._named_1x1(self.head_features, 2 * self.num_layers)(nn.relu(skip))
        num_params = self.likelihood.num_params()
        out = self._named_1x1(self.num_groups * num_params, 2 * self.num_layers + 1)(
            nn.relu(out)
        )
        return out.reshape(*out.shape[:3], self.num_groups, num_params)

    def _named_1x1(self, features, index):
        return layers.MaskedConv2D(
            features, 1, "B", num_groups=self.num_groups, conv_impl=self.conv_impl,
            name=f"MaskedConv2D_{index}",
        )


def decoder(model, variables, labels, cond, batch):
    """The `base.Decoder` of a `GatedPixelCNN`: vertical rows per row, horizontal pixels."""
    x_BHWC = jnp.zeros((batch, *model.event_shape), jnp.int32)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(GatedPixelCNN)
              if f.name not in ("parent", "name")}
    decoder = Decoder(**fields)
    cond_map = decoder.apply(variables, None, None, cond, "cond") if model.cond_shape else None

    def start_row(state, x_BHWC, i):
        row = jnp.maximum(i - 1, 0)  # row 0 needs none: `valid` zeroes what is computed
        cond_row = None if cond_map is None else jax.lax.dynamic_slice_in_dim(cond_map, row, 1, 1)
        valid = jnp.where(i > 0, 1.0, 0.0)
        decoding_vars = {**variables, "cache": cache.at(state[0], row, 0)}
        below, updates = decoder.apply(
            decoding_vars, x_BHWC, labels, cond_row, "vertical", valid=valid, mutable=["cache"]
        )
        return updates["cache"], below

    def pixel_params(state, x_BHWC, i, j):
        caches, below = state
        below_j = [jax.lax.dynamic_slice_in_dim(b, j, 1, 2) for b in below]
        cond_pixel = None
        if cond_map is not None:
            size = (batch, 1, 1, cond_map.shape[-1])
            cond_pixel = jax.lax.dynamic_slice(cond_map, (0, i, j, 0), size)
        decoding_vars = {**variables, "cache": cache.at(caches, i, j)}
        params, updates = decoder.apply(
            decoding_vars, x_BHWC, labels, cond_pixel, "horizontal", below=below_j,
            mutable=["cache"],
        )
        return params, (updates["cache"], below)

    caches = cache.init(model, variables, x_BHWC, labels, cond)
    # `below` is written by start_row before any pixel: zeros of its shapes to start.
    below = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(lambda c: start_row((c, None), x_BHWC, 0)[1], caches),
    )
    return decoding.pixel_decoder(model, (caches, below), pixel_params, start_row)

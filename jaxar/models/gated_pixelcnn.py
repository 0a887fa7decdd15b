"""Gated PixelCNN (van den Oord et al., 2016: Conditional Image Generation with PixelCNN Decoders).

A vertical stack (rows above, by padding and cropping) and a horizontal stack
(the current row to the left) replace the masked convolution, which removes
PixelCNN's blind spot. The vertical stack reaches the horizontal one only
through a down-shift. Each layer is a gated unit `tanh * sigmoid`, optionally
conditioned on a class (a learned bias) and/or a spatial map (upsampled with
a transposed convolution to the image size). The horizontal stack is residual
and every layer feeds a skip connection into the output head.

Spatial conditioning: `cond_shape = (h, w, d)` makes `cond` a float input
`[B, h, w, d]`; `lowres_condition` builds one from the image itself (a
down-sampled copy), which turns the model into p(image | low-resolution image).
With `cond_levels = K > 0`, `cond` is instead an int map `[B, h, w, 1]` of codes
in [0, K) that the dataset serves (a coarser VQ-VAE code map: a VQ-VAE-2 prior),
embedded and upsampled by `layers.CodeUpsampler`.

`conv_impl` picks how the stacks' convolutions run (`jaxar.nn.fast_conv`);
`decoder` runs the same modules on the vertical stack a row at a time and on the
horizontal stack a pixel at a time, from `jaxar.nn.cache` caches.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar import distributions
from jaxar.models import base, configs, decoding
from jaxar.nn import cache, fast_conv, layers


class GatedPixelCNN(base.Model):
    event_shape: tuple[int, int, int]
    num_levels: int
    likelihood_name: str = "categorical"
    features: int = 64
    num_layers: int = 8
    kernel_size: int = 5
    input_kernel_size: int = 7
    head_features: int = 128
    num_classes: int = 0
    cond_shape: tuple[int, ...] | None = None
    cond_levels: int = 0  # 0: `cond` is a float map; K > 0: int codes in [0, K)
    cond_features: int = 16
    conv_impl: str = "auto"

    @property
    def likelihood(self):
        return distributions.make_likelihood(self.likelihood_name, self.num_levels)

    @property
    def num_groups(self) -> int:
        return self.event_shape[-1]

    def setup(self):
        p, k, impl, groups = self.features, self.kernel_size, self.conv_impl, self.num_groups
        conv_fn = fast_conv.conv_general_dilated_fn(impl)
        masked_1x1 = lambda features: layers.MaskedConv2D(
            features, 1, "B", num_groups=groups, conv_impl=impl
        )
        self.v_in = layers.VerticalStackConv(p, self.input_kernel_size, impl)
        self.h_in = layers.HorizontalStackConv(p, self.input_kernel_size, "A", groups,
                                               conv_impl=impl)
        self.v_to_h_in = nn.Conv(p, (1, 1), conv_general_dilated=conv_fn)
        self.v_convs = [layers.VerticalStackConv(2 * p, k, impl) for _ in range(self.num_layers)]
        self.h_convs = [
            layers.HorizontalStackConv(2 * p, k, "B", groups, out_blocks=2, conv_impl=impl)
            for _ in range(self.num_layers)
        ]
        self.v_to_h = [
            nn.Conv(2 * p, (1, 1), conv_general_dilated=conv_fn) for _ in range(self.num_layers)
        ]
        # The last vertical layer's gated output would feed nothing: it has no gate.
        self.v_gates = [layers.GatedActivation(impl) for _ in range(self.num_layers - 1)]
        self.h_gates = [layers.GatedActivation(impl) for _ in range(self.num_layers)]
        self.skips = [masked_1x1(self.head_features) for _ in range(self.num_layers)]
        self.residuals = [masked_1x1(p) for _ in range(self.num_layers)]
        self.head = masked_1x1(self.head_features)
        self.out = masked_1x1(self.num_groups * self.likelihood.num_params())
        if self.cond_shape:
            height, width = self.event_shape[:2]
            stride = (height // self.cond_shape[0], width // self.cond_shape[1])
            if self.cond_levels:
                self.cond_upsample = layers.CodeUpsampler(self.cond_levels, self.cond_features,
                                                          stride)
            else:
                self.cond_upsample = nn.ConvTranspose(self.cond_features, stride,
                                                      strides=stride)

    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Likelihood parameters `[B, H, W, C, F]`."""
        del train
        cond_BHWD = self.upsample_cond(cond)
        vertical = self.vertical(x, labels, cond_BHWD)
        below = self.project_down(vertical, shift=True)
        return self.horizontal(x, labels, cond_BHWD, below)

    def upsample_cond(self, cond):
        """The conditioning map at the image's resolution `[B, H, W, cond_features]` (codes
        embedded first when `cond_levels`), or None."""
        return self.cond_upsample(cond) if self.cond_shape else None

    def vertical(self, x, labels, cond_BHWD):
        """The vertical stack: its input layer's output and every layer's pre-activation.

        Under `jaxar.nn.cache` (decoding) each is the cache's row only, `[B, 1, W, F]`.
        """
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        v = self.v_in(layers.scale_to_unit(x, self.num_levels))
        outputs = [v]
        for i in range(self.num_layers):
            v_pre = self.v_convs[i](v)
            outputs.append(v_pre)
            if i < len(self.v_gates):
                v = self.v_gates[i](v_pre, label_BK, cond_BHWD)
        return outputs

    def project_down(self, vertical, shift: bool, valid=1.0):
        """What the horizontal stack reads of each vertical output: a 1x1 projection of the
        row above (`layers.down_shift` on whole maps; when decoding, the caller passes the
        row above and `valid = 0` stands for the zeros above the first row)."""
        convs = [self.v_to_h_in, *self.v_to_h]
        shifted = [layers.down_shift(v) if shift else v * valid for v in vertical]
        return [conv(v) for conv, v in zip(convs, shifted, strict=True)]

    def horizontal(self, x, labels, cond_BHWD, below):
        """The horizontal stack and the head: likelihood parameters `[B, H, W, C, F]`
        (the cache's pixel, `[B, 1, 1, C, F]`, when decoding)."""
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        h = self.h_in(layers.scale_to_unit(x, self.num_levels)) + below[0]
        skip = 0.0
        for i in range(self.num_layers):
            h_pre = self.h_convs[i](h) + below[i + 1]
            h_gated = self.h_gates[i](h_pre, label_BK, cond_BHWD)
            skip = skip + self.skips[i](h_gated)
            h = h + self.residuals[i](h_gated)
        out = self.out(nn.relu(self.head(nn.relu(skip))))
        return out.reshape(*out.shape[:3], self.num_groups, self.likelihood.num_params())

    @nn.nowrap
    def derive_cond(self, x):
        """The low-resolution copy of x (`lowres_condition`) for a float `cond_shape`, else
        None (none, or integer codes, which the dataset serves)."""
        if not self.cond_shape or self.cond_levels:
            return None
        return lowres_condition(x, self.num_levels, self.cond_shape)

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """The vertical stack once per row (`vertical` on the row above, from caches of the
        rows before it), the horizontal stack once per pixel and channel (`horizontal`,
        from caches of the columns to its left): H row passes and H * W * C pixel passes
        instead of H * W * C full-image passes. The same modules and parameters as
        `__call__`; only the "cache" collection (`jaxar.nn.cache`) differs."""
        x_BHWC = jnp.zeros((batch, *self.event_shape), jnp.int32)
        cond_map = self.apply(variables, cond, method=GatedPixelCNN.upsample_cond)
        decode = functools.partial(self.apply, mutable=["cache"])

        def rows(cond_map, i):
            return None if cond_map is None else jax.lax.dynamic_slice_in_dim(cond_map, i, 1, 1)

        def start_row(state, x_BHWC, i):
            # The horizontal stack of row i reads the vertical stack of row i - 1.
            row = jnp.maximum(i - 1, 0)
            vertical, updates = decode(
                {**variables, "cache": cache.at(state[0], row, 0)}, x_BHWC, labels,
                rows(cond_map, row), method=GatedPixelCNN.vertical,
            )
            below = self.apply(variables, vertical, False, jnp.where(i > 0, 1.0, 0.0),
                               method=GatedPixelCNN.project_down)
            return updates["cache"], below

        def pixel_params(state, x_BHWC, i, j):
            caches, below = state
            below_j = [jax.lax.dynamic_slice_in_dim(b, j, 1, 2) for b in below]
            cond_pixel = None
            if cond_map is not None:
                cond_pixel = jax.lax.dynamic_slice_in_dim(rows(cond_map, i), j, 1, 2)
            params, updates = decode(
                {**variables, "cache": cache.at(caches, i, j)}, x_BHWC, labels, cond_pixel,
                below_j, method=GatedPixelCNN.horizontal,
            )
            return params, (updates["cache"], below)

        caches = cache.init(self, variables, x_BHWC, labels, cond)
        # `below` is written by start_row before any pixel: zeros of its shapes to start.
        below = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(lambda c: start_row((c, None), x_BHWC, 0)[1], caches),
        )
        return decoding.pixel_decoder(self, (caches, below), pixel_params, start_row)


def lowres_condition(x_BHWC: jax.Array, num_levels: int, cond_shape) -> jax.Array:
    """A down-sampled copy of the image in [-1, 1]: `[B, *cond_shape]` (average pooling)."""
    ch, cw = cond_shape[:2]
    batch, height, width, channels = x_BHWC.shape
    x = layers.scale_to_unit(x_BHWC, num_levels)
    x = x.reshape(batch, ch, height // ch, cw, width // cw, channels)
    return x.mean(axis=(2, 4))


def check_config(f: dict, given: frozenset) -> None:
    """Gated PixelCNN's value checks on the resolved fields (`jaxar.models.configs`)."""
    del given
    shape, cond_shape = f["event_shape"], f["cond_shape"] or None  # (): no conditioning
    if cond_shape and (len(cond_shape) != 3 or min(cond_shape) < 1
                       or shape[0] % cond_shape[0] or shape[1] % cond_shape[1]):
        raise ValueError(
            f"model.cond_shape must be (h, w, depth) with h, w dividing the image "
            f"size {shape[:2]}, got {cond_shape}"
        )
    f["cond_shape"] = cond_shape
    if f["cond_levels"] and not (cond_shape and cond_shape[2] == 1):
        raise ValueError(
            f"model.cond_levels={f['cond_levels']} (integer codes) needs model.cond_shape "
            f"(h, w, 1): one code per position, got {cond_shape}"
        )
    for key in ("kernel_size", "input_kernel_size"):
        if f[key] < 3 or f[key] % 2 != 1:
            raise ValueError(f"model.{key} must be odd and >= 3, got {f[key]}")
    fast_conv.check_impl(f["conv_impl"])


configs.register(GatedPixelCNN, configs.Spec(
    event_ndim=3,
    aliases={"likelihood": "likelihood_name"},
    positive=("features", "head_features", "cond_features"),
    check=check_config,
))


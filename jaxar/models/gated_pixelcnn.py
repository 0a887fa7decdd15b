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

`conv_impl` picks how the stacks' convolutions run (`jaxar.nn.fast_conv`);
`cached_sampler` (`jaxar.models.gated_pixelcnn_cache`) computes the vertical
stack a row at a time and the horizontal stack a pixel at a time from caches.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxar import distributions
from jaxar.models import base, common
from jaxar.nn import fast_conv, layers


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
    cond_features: int = 16
    conv_impl: str = "auto"

    @property
    def likelihood(self):
        return distributions.make_likelihood(self.likelihood_name, self.num_levels)

    @property
    def num_groups(self) -> int:
        return self.event_shape[-1]

    def _masked_1x1(self, features, out_blocks=1):
        return layers.MaskedConv2D(
            features, 1, "B", num_groups=self.num_groups, out_blocks=out_blocks,
            conv_impl=self.conv_impl,
        )

    @nn.compact
    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Likelihood parameters `[B, H, W, C, F]`."""
        del train
        batch, height, width, channels = x.shape
        num_params = self.likelihood.num_params()
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        cond_BHWD = self._upsample_cond(cond, height, width)
        p = self.features

        x_in = layers.scale_to_unit(x, self.num_levels)
        impl = self.conv_impl
        v = layers.VerticalStackConv(p, self.input_kernel_size, impl)(x_in)
        h = layers.HorizontalStackConv(
            p, self.input_kernel_size, "A", self.num_groups, conv_impl=impl
        )(x_in)
        conv_fn = fast_conv.conv_general_dilated_fn(impl)
        h = h + nn.Conv(p, (1, 1), conv_general_dilated=conv_fn)(layers.down_shift(v))
        skip = 0.0
        for _ in range(self.num_layers):
            v_pre = layers.VerticalStackConv(2 * p, self.kernel_size, impl)(v)
            h_pre = layers.HorizontalStackConv(
                2 * p, self.kernel_size, "B", self.num_groups, out_blocks=2, conv_impl=impl
            )(h)
            h_pre = h_pre + nn.Conv(2 * p, (1, 1), conv_general_dilated=conv_fn)(
                layers.down_shift(v_pre)
            )
            v = layers.GatedActivation(impl)(v_pre, label_BK, cond_BHWD)
            h_gated = layers.GatedActivation(impl)(h_pre, label_BK, cond_BHWD)
            skip = skip + self._masked_1x1(self.head_features)(h_gated)
            h = h + self._masked_1x1(p)(h_gated)
        out = self._masked_1x1(self.head_features)(nn.relu(skip))
        out = self._masked_1x1(channels * num_params)(nn.relu(out))
        return out.reshape(batch, height, width, channels, num_params)

    @nn.nowrap
    def derive_cond(self, x):
        """The low-resolution copy of x (`lowres_condition`) if `cond_shape`, else None."""
        if not self.cond_shape:
            return None
        return lowres_condition(x, self.num_levels, self.cond_shape)

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """Vertical stack once per row, horizontal stack per pixel."""
        from jaxar.models import gated_pixelcnn_cache  # it subclasses this model

        return gated_pixelcnn_cache.decoder(self, variables, labels, cond, batch)

    def _upsample_cond(self, cond, height, width):
        if not self.cond_shape:
            return None
        ch, cw = self.cond_shape[:2]
        stride = (height // ch, width // cw)
        return nn.ConvTranspose(self.cond_features, stride, strides=stride)(cond)


def lowres_condition(x_BHWC: jax.Array, num_levels: int, cond_shape) -> jax.Array:
    """A down-sampled copy of the image in [-1, 1]: `[B, *cond_shape]` (average pooling)."""
    ch, cw = cond_shape[:2]
    batch, height, width, channels = x_BHWC.shape
    x = layers.scale_to_unit(x_BHWC, num_levels)
    x = x.reshape(batch, ch, height // ch, cw, width // cw, channels)
    return x.mean(axis=(2, 4))


def from_config(model_cfg, shape, num_levels) -> GatedPixelCNN:
    shape = common.check_event_shape("gated_pixelcnn", shape, 3)
    cond_shape = model_cfg.get("cond_shape", None)
    if cond_shape:
        cond_shape = tuple(int(d) for d in cond_shape)
        if len(cond_shape) != 3 or shape[0] % cond_shape[0] or shape[1] % cond_shape[1]:
            raise ValueError(
                f"model.cond_shape must be (h, w, depth) with h, w dividing the image "
                f"size {shape[:2]}, got {cond_shape}"
            )
    for key, default in (("kernel_size", 5), ("input_kernel_size", 7)):
        k = model_cfg.get(key, default)
        if k < 3 or k % 2 != 1:
            raise ValueError(f"model.{key} must be odd and >= 3, got {k}")
    return GatedPixelCNN(
        event_shape=shape,
        num_levels=num_levels,
        likelihood_name=model_cfg.get("likelihood", "categorical"),
        features=model_cfg.get("features", 64),
        num_layers=model_cfg.get("num_layers", 8),
        kernel_size=model_cfg.get("kernel_size", 5),
        input_kernel_size=model_cfg.get("input_kernel_size", 7),
        head_features=model_cfg.get("head_features", 128),
        num_classes=model_cfg.get("num_classes", 0),
        cond_shape=cond_shape or None,
        cond_features=model_cfg.get("cond_features", 16),
        conv_impl=fast_conv.check_impl(model_cfg.get("conv_impl", "auto")),
    )


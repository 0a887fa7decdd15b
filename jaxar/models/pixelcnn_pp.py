"""PixelCNN++ (Salimans et al., 2017).

Two streams of shifted convolutions replace masks: `u` sees the rows above a
pixel, `ul` the rows above and the pixels to its left. Both go through gated
resnet blocks (concat_elu, dropout, weight norm with data-dependent init) at
`num_resolutions` resolutions, halved by stride-2 shifted convolutions on the
way up and doubled by shifted transposed convolutions on the way down; every
down-pass block takes the matching up-pass output as a skip input (U-Net
shortcuts). The network output at a pixel sees only earlier pixels; the
channels of a pixel are coupled by the discretized logistic mixture (G's
mean moves with R, B's with R and G), so the per-sub-pixel factorization
that `jaxar.log_prob` reports is exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar import distributions
from jaxar.models import base, common, pixelcnn_pp_cache
from jaxar.nn import fast_conv, layers
from jaxar.nn import shifted_layers as sl


class PixelCNNPP(base.Model):
    event_shape: tuple[int, int, int]
    num_levels: int
    features: int = 160
    num_resnets: int = 5
    num_resolutions: int = 3
    num_mixtures: int = 10
    dropout_rate: float = 0.5
    num_classes: int = 0
    conv_impl: str = "auto"

    @property
    def likelihood(self):
        return distributions.make_likelihood(
            "dmol", self.num_levels, self.num_mixtures, self.event_shape[-1]
        )

    @nn.compact
    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Mixture parameters `[B, H, W, F]`, one vector per pixel."""
        del cond
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        _, x_pad = sl.pixel_inputs(x, self.num_levels)
        impl = self.conv_impl
        resnet = lambda conv: sl.GatedResnet(conv, self.dropout_rate, conv_impl=impl)
        f = self.features

        u_list = [layers.down_shift(sl.down_shifted_conv(f, (2, 3), conv_impl=impl)(x_pad))]
        ul_list = [sl.up_left_stream(x_pad, f, impl)]
        for level in range(self.num_resolutions):
            if level:
                u_list.append(sl.down_shifted_conv(f, strides=2)(u_list[-1]))
                ul_list.append(sl.down_right_shifted_conv(f, strides=2)(ul_list[-1]))
            for _ in range(self.num_resnets):
                u_list.append(resnet("down")(u_list[-1], None, label_BK, train))
                ul_list.append(resnet("down_right")(ul_list[-1], u_list[-1], label_BK, train))

        u, ul = u_list.pop(), ul_list.pop()
        for level in range(self.num_resolutions):
            if level:
                u = sl.down_shifted_conv_transpose(f)(u)
                ul = sl.down_right_shifted_conv_transpose(f)(ul)
            for _ in range(self.num_resnets + (level > 0)):
                u = resnet("down")(u, u_list.pop(), label_BK, train)
                skip = jnp.concatenate([u, ul_list.pop()], axis=-1)
                ul = resnet("down_right")(ul, skip, label_BK, train)
        return sl.WNDense(self.likelihood.num_params())(jax.nn.elu(ul))

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """Each activation computed once, when its position is reached
        (`jaxar.models.pixelcnn_pp_cache`): u rows per image row, ul per pixel."""
        return pixelcnn_pp_cache.decoder(self, variables, labels, cond, batch)


def from_config(model_cfg, shape, num_levels) -> PixelCNNPP:
    shape = common.check_event_shape("pixelcnn_pp", shape, 3)
    num_resolutions = model_cfg.get("num_resolutions", 3)
    factor = 2 ** (num_resolutions - 1)
    if num_resolutions < 1 or shape[0] % factor or shape[1] % factor:
        raise ValueError(
            f"model.num_resolutions={num_resolutions} halves the image {num_resolutions - 1} "
            f"times: data.shape {shape} needs height and width divisible by {factor}"
        )
    likelihood = model_cfg.get("likelihood", "dmol")
    if likelihood != "dmol":
        raise ValueError(f"model.likelihood for pixelcnn_pp must be 'dmol', got {likelihood!r}")
    check_dropout_rate(model_cfg.get("dropout_rate", 0.5))
    return PixelCNNPP(
        event_shape=shape,
        num_levels=num_levels,
        features=model_cfg.get("features", 160),
        num_resnets=model_cfg.get("num_resnets", 5),
        num_resolutions=num_resolutions,
        num_mixtures=model_cfg.get("num_mixtures", 10),
        dropout_rate=model_cfg.get("dropout_rate", 0.5),
        num_classes=model_cfg.get("num_classes", 0),
        conv_impl=fast_conv.check_impl(model_cfg.get("conv_impl", "auto")),
    )


def check_dropout_rate(rate) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout_rate must lie in [0, 1), got {rate}")

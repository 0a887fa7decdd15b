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
from jaxar.models import base, configs, pixelcnn_pp_cache, released
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
    # False: log-scales clipped below only (at -7), as the released code's likelihood.
    clip_high_log_scales: bool = True

    @property
    def likelihood(self):
        return distributions.make_likelihood(
            "dmol", self.num_levels, self.num_mixtures, self.event_shape[-1],
            distributions.DiscretizedLogisticMixture.max_log_scale
            if self.clip_high_log_scales else float("inf"),
        )

    @nn.nowrap
    def layer_names(self) -> dict:
        """The name of every layer, by role: the one table `__call__` names its layers
        from and the cached decoder (`jaxar.models.pixelcnn_pp_cache`) reads them by.

        {"u_in", "ul_above", "ul_left", "out"} and, per resolution l (the image halved
        l times), `up[l]` / `down[l]`: "u_res" / "ul_res" (the gated resnets of the up
        and down passes, in order) and "u_conv" / "ul_conv" (the stride-2 layer into l
        on the way up, l > 0; the transposed one into l on the way down, l < last).
        Names: `u_in`, `up1_u_conv`, `up0_ul_res2`, `down0_ul_conv`, `down1_u_res0`, ...
        """
        res, nr = self.num_resolutions, self.num_resnets

        def level(where, lvl, num_resnets, has_conv):
            names = {f"{s}_res": [f"{where}{lvl}_{s}_res{k}" for k in range(num_resnets)]
                     for s in ("u", "ul")}
            if has_conv:
                names.update(u_conv=f"{where}{lvl}_u_conv", ul_conv=f"{where}{lvl}_ul_conv")
            return names

        return {
            "u_in": "u_in", "ul_above": "ul_above", "ul_left": "ul_left", "out": "out",
            "up": [level("up", lvl, nr, lvl > 0) for lvl in range(res)],
            "down": [level("down", lvl, nr + (lvl < res - 1), lvl < res - 1)
                     for lvl in range(res)],
        }

    @nn.nowrap
    def released_layers(self) -> list[released.Layer]:
        """The layers in the order openai/pixel-cnn's `model_spec` creates them
        (`jaxar.models.released`): its `conv2d_k` / `deconv2d_k` / `dense_k` variables.

        The original has 3 resolutions and no class conditioning; each gated resnet
        creates conv_in, aux_in (with a skip input) and gate_out in that order; the
        up pass alternates u and ul resnets, the down pass too.
        """
        if self.num_resolutions != 3 or self.num_classes or self.event_shape[-1] != 3:
            raise ValueError(
                "the released PixelCNN++ has model.num_resolutions=3, no classes and RGB "
                f"images; this config has {self.num_resolutions}, {self.num_classes}, "
                f"{self.event_shape[-1]} channel(s)")
        names = self.layer_names()
        conv = lambda name: released.Layer((name,), "conv2d")
        layers = [conv(names["u_in"]), conv(names["ul_above"]), conv(names["ul_left"])]

        def resnet(name, kind, aux):
            subs = [("conv_in", kind)] + [("aux_in", "dense")] * aux + [("gate_out", kind)]
            return [released.Layer((name, sub), k) for sub, k in subs]

        for level, up in enumerate(names["up"]):
            if level:
                layers += [conv(up["u_conv"]), conv(up["ul_conv"])]
            for u_name, ul_name in zip(up["u_res"], up["ul_res"], strict=True):
                layers += resnet(u_name, "conv2d", False) + resnet(ul_name, "conv2d", True)
        for level in reversed(range(self.num_resolutions)):
            down = names["down"][level]
            if "u_conv" in down:
                layers += [released.Layer((down["u_conv"],), "deconv2d"),
                           released.Layer((down["ul_conv"],), "deconv2d")]
            for u_name, ul_name in zip(down["u_res"], down["ul_res"], strict=True):
                layers += resnet(u_name, "conv2d", True) + resnet(ul_name, "conv2d", True)
        order = released.original_dmol_order(self.num_mixtures)
        return layers + [released.Layer((names["out"],), "dense", order)]

    @nn.compact
    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Mixture parameters `[B, H, W, F]`, one vector per pixel."""
        del cond
        names = self.layer_names()
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        _, x_pad = sl.pixel_inputs(x, self.num_levels)
        impl = self.conv_impl
        resnet = lambda conv, name: sl.GatedResnet(conv, self.dropout_rate, conv_impl=impl,
                                                   name=name)
        f = self.features

        u_in = sl.down_shifted_conv(f, conv_impl=impl, name=names["u_in"])
        u_list = [layers.down_shift(u_in(x_pad))]
        ul_list = [sl.up_left_stream(x_pad, f, impl, (names["ul_above"], names["ul_left"]))]
        for level, up in enumerate(names["up"]):
            if level:
                u_list.append(sl.down_shifted_conv(f, strides=2, name=up["u_conv"])(u_list[-1]))
                ul_list.append(
                    sl.down_right_shifted_conv(f, strides=2, name=up["ul_conv"])(ul_list[-1]))
            for u_name, ul_name in zip(up["u_res"], up["ul_res"], strict=True):
                u_list.append(resnet("down", u_name)(u_list[-1], None, label_BK, train))
                ul_list.append(
                    resnet("down_right", ul_name)(ul_list[-1], u_list[-1], label_BK, train))

        u, ul = u_list.pop(), ul_list.pop()
        for level in reversed(range(self.num_resolutions)):
            down = names["down"][level]
            if "u_conv" in down:
                u = sl.down_shifted_conv_transpose(f, name=down["u_conv"])(u)
                ul = sl.down_right_shifted_conv_transpose(f, name=down["ul_conv"])(ul)
            for u_name, ul_name in zip(down["u_res"], down["ul_res"], strict=True):
                u = resnet("down", u_name)(u, u_list.pop(), label_BK, train)
                skip = jnp.concatenate([u, ul_list.pop()], axis=-1)
                ul = resnet("down_right", ul_name)(ul, skip, label_BK, train)
        assert not u_list and not ul_list  # every up-pass output fed one down-pass resnet
        return sl.WNDense(self.likelihood.num_params(), name=names["out"])(jax.nn.elu(ul))

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """Each activation computed once, when its position is reached
        (`jaxar.models.pixelcnn_pp_cache`): u rows per image row, ul per pixel."""
        return pixelcnn_pp_cache.decoder(self, variables, labels, cond, batch)


def check_config(f: dict, given: frozenset) -> None:
    """PixelCNN++'s value checks on the resolved fields (`jaxar.models.configs`)."""
    del given
    shape, num_resolutions = f["event_shape"], f["num_resolutions"]
    factor = 2 ** (num_resolutions - 1)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(
            f"model.num_resolutions={num_resolutions} halves the image {num_resolutions - 1} "
            f"times: data.shape {shape} needs height and width divisible by {factor}"
        )
    check_dropout_rate(f["dropout_rate"])
    fast_conv.check_impl(f["conv_impl"])


configs.register(PixelCNNPP, configs.Spec(
    event_ndim=3,
    fixed={"likelihood": "dmol"},  # a discretized logistic mixture only
    positive=("features", "num_resolutions", "num_mixtures"),
    check=check_config,
))


def check_dropout_rate(rate) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout_rate must lie in [0, 1), got {rate}")

"""PixelCNN (van den Oord et al., 2016, "Pixel Recurrent Neural Networks").

Two architectures share the masked convolutions of `jaxar.nn.layers`:

* "residual" (the paper's): a mask-A 7x7 input convolution to 2h features,
  residual blocks 2h -> h (1x1) -> h (masked k x k, dilated) -> 2h (1x1), and
  a 1x1 output head.
* "plain" (the `seed` variant's network): a mask-A convolution followed by
  mask-B convolutions of the same size with ReLU between them; the last one
  outputs the likelihood parameters.

Normalization: "none" (default) or "batch". BatchNorm in training mode
normalizes with statistics over the whole batch and all positions, so the
output at a pixel depends on pixels after it: the training loss is then not
the loss of an autoregressive model (`tests/test_models.py` shows the leak).
In eval mode it uses running averages and is causal.

`conv_impl` picks how the masked convolutions run (`jaxar.nn.fast_conv`);
`decoder` decodes pixel by pixel through the layers' caches
(`jaxar.models.decoding`): the same `__call__`, given the cache, computes the
current pixel only.
"""

from __future__ import annotations

import flax.linen as nn

from jaxar import distributions
from jaxar.models import base, configs, decoding
from jaxar.nn import fast_conv, layers


class PixelCNN(base.Model):
    event_shape: tuple[int, int, int]
    num_levels: int
    likelihood_name: str = "categorical"
    architecture: str = "residual"
    features: int = 64
    num_layers: int = 7
    kernel_size: int = 3
    input_kernel_size: int = 7
    dilations: tuple[int, ...] = (1, 2, 1, 3, 1, 2, 1)
    head_features: int = 128
    norm: str = "none"
    num_classes: int = 0
    conv_impl: str = "auto"

    @property
    def likelihood(self):
        return distributions.make_likelihood(self.likelihood_name, self.num_levels)

    def _conv(self, features, kernel, mask_type="B", dilation=1, out_blocks=1):
        return layers.MaskedConv2D(
            features,
            kernel,
            mask_type,
            dilation,
            num_groups=self.event_shape[-1],
            out_blocks=out_blocks,
            conv_impl=self.conv_impl,
        )

    def _norm(self, y, train):
        if self.norm == "batch":
            return nn.BatchNorm(use_running_average=not train)(y)
        return y

    @nn.compact
    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Likelihood parameters `[B, H, W, C, F]` (`[B, 1, 1, C, F]` when decoding a pixel)."""
        del cond
        channels = x.shape[-1]
        num_params = self.likelihood.num_params()
        out_features = channels * num_params
        h = layers.scale_to_unit(x, self.num_levels)
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        if self.architecture == "plain":
            h = self._conv(self.features, self.input_kernel_size, "A")(h)
            for _ in range(self.num_layers):
                h = nn.relu(self._norm(h, train))
                h = self._conv(self.features, self.input_kernel_size)(h)
                h = _add_label_bias(h, label_BK)
            out = self._conv(out_features, self.input_kernel_size)(nn.relu(h))
        else:
            h = self._conv(2 * self.features, self.input_kernel_size, "A")(h)
            for dilation in self.dilations[: self.num_layers]:
                h = h + self._residual_block(h, label_BK, dilation, train)
            h = self._conv(self.head_features, 1)(nn.relu(h))
            out = self._conv(out_features, 1)(nn.relu(h))
        return out.reshape(*out.shape[:3], channels, num_params)

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """One pixel per call from per-layer caches: this `__call__` under `jaxar.nn.cache`."""
        return decoding.cache_decoder(self, variables, labels, cond, batch)

    def _residual_block(self, h, label_BK, dilation, train):
        y = self._conv(self.features, 1)(nn.relu(self._norm(h, train)))
        y = self._conv(self.features, self.kernel_size, dilation=dilation)(nn.relu(y))
        y = _add_label_bias(self._norm(y, train), label_BK)
        return self._conv(2 * self.features, 1)(nn.relu(y))


def _add_label_bias(h, label_BK):
    if label_BK is None:
        return h
    return h + nn.Dense(h.shape[-1], use_bias=False)(label_BK)[:, None, None, :]


def check_config(f: dict, given: frozenset) -> None:
    """PixelCNN's value checks on the resolved fields (`jaxar.models.configs`)."""
    if f["architecture"] not in ("residual", "plain"):
        raise ValueError(
            f"model.architecture must be 'residual' or 'plain', got {f['architecture']!r}"
        )
    if f["norm"] not in ("none", "batch"):
        raise ValueError(f"model.norm must be 'none' or 'batch', got {f['norm']!r}")
    if "num_layers" not in given:  # one residual block per dilation
        f["num_layers"] = len(f["dilations"])
    if f["architecture"] == "residual" and f["num_layers"] > len(f["dilations"]):
        raise ValueError(
            f"model.num_layers={f['num_layers']} needs as many model.dilations, "
            f"got {f['dilations']}"
        )
    layers.check_kernel_sizes(
        [f["kernel_size"], f["input_kernel_size"]], "model.kernel_size / model.input_kernel_size"
    )
    fast_conv.check_impl(f["conv_impl"])


configs.register(PixelCNN, configs.Spec(
    event_ndim=3,
    aliases={"likelihood": "likelihood_name"},
    positive=("features", "kernel_size", "input_kernel_size", "dilations", "head_features"),
    check=check_config,
))


"""Weight-normalized, shift-causal layers of PixelCNN++ and PixelSNAIL.

Every convolution here is weight-normalized (Salimans & Kingma, 2016):
`W = g * V / ||V||` with the norm over all axes but the output one, plus a
bias b. `g` and `b` are set from data the first time the layer runs, i.e.
inside `model.init` on the init batch (`jaxar.init_variables(model, cfg,
key, x)`): the layer's pre-activation `y = conv(x, V / ||V||)` then becomes
`(y - mean) / std * init_scale` per output feature, so every layer starts
with zero mean and unit (or `init_scale`) variance on that batch. Layers run
in order during init, so each layer is normalized on the already normalized
outputs of the layers before it.

Causality comes from padding and shifting instead of masks (PixelCNN++,
Salimans et al., 2017): a "down-shifted" convolution pads k_h - 1 rows on
top, a "down-right-shifted" one also pads k_w - 1 columns on the left.
Each docstring says what an output can NOT see; `tests/test_pixelcnn_pp.py`
proves it with gradients.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.nn import fast_conv, layers

# Added to the init-batch variance: a feature that is constant on the init
# batch keeps a finite scale.
INIT_EPS = 1e-6
# The residual branch of a gated resnet starts small (the released code's 0.1),
# so a deep stack starts close to the identity.
RESIDUAL_INIT_SCALE = 0.1


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finalizer: a bijective avalanche mix of uint32 words."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(key, size: int) -> jax.Array:
    """`size` pseudo-random uint32 words: a counter hashed with the key's data.

    For weight directions and dropout masks, which need no cryptographic
    randomness: each threefry draw costs about 1 s of XLA:CPU compile
    (measured, jax 0.10.2), minutes for a paper-sized model; this costs a few
    fused integer ops.
    """
    seed = jax.random.key_data(key).ravel().astype(jnp.uint32)
    count = jnp.arange(size, dtype=jnp.uint32)
    return _fmix32(_fmix32(count ^ seed[0]) + seed[-1] * jnp.uint32(0x9E3779B9))


def direction_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """Standard normal V (Box-Muller on `hash_bits`); weight norm keeps only its direction."""
    bits = hash_bits(key, 2 * math.prod(shape))
    u = ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    u1, u2 = u[0::2], u[1::2]
    z = jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)
    return z.reshape(shape).astype(dtype)


def dropout(key, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: zeroes each element with probability `rate` (mask from `hash_bits`)."""
    threshold = jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    keep = hash_bits(key, x.size).reshape(x.shape) >= threshold
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _label_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """N(0, 0.05^2) per-class gate biases, as in the released code."""
    return 0.05 * direction_init(key, shape, dtype)


def _data_dependent_affine(module: nn.Module, y: jax.Array, init_scale: float) -> jax.Array:
    """`y * g + b`; at init g, b make every feature of y zero-mean with std `init_scale`."""
    g_init = b_init = nn.initializers.zeros  # only used when the params already exist
    if module.is_initializing():
        axes = tuple(range(y.ndim - 1))
        scale = init_scale / jnp.sqrt(jnp.var(y, axis=axes) + INIT_EPS)
        shift = -jnp.mean(y, axis=axes) * scale
        g_init, b_init = (lambda *_: scale), (lambda *_: shift)
    g = module.param("g", g_init, (y.shape[-1],))
    b = module.param("b", b_init, (y.shape[-1],))
    return y * g + b


class WNConv(nn.Module):
    """Weight-normalized 2-D convolution with explicit padding, NHWC.

    `input_dilation=2` makes it a stride-2 transposed convolution (zeros
    between input pixels). What an output sees is set by the padding: see the
    shifted wrappers below. `conv_impl` (`jaxar.nn.fast_conv`) applies to stride-1
    convolutions; strided and transposed ones always run as XLA's convolution.
    """

    features: int
    kernel_size: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    strides: int = 1
    input_dilation: int = 1
    init_scale: float = 1.0
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        v = self.param("v", direction_init, (kh, kw, x_BHWC.shape[-1], self.features))
        kernel = v * jax.lax.rsqrt(jnp.sum(v * v, axis=(0, 1, 2)))
        if self.strides == self.input_dilation == 1:
            impl = fast_conv.resolve_impl(self.conv_impl)
            y = fast_conv.conv(x_BHWC, kernel, None, 1, impl, self.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x_BHWC,
                kernel,
                window_strides=(self.strides, self.strides),
                padding=self.padding,
                lhs_dilation=(self.input_dilation, self.input_dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return _data_dependent_affine(self, y, self.init_scale)


class WNDense(nn.Module):
    """Weight-normalized dense layer on the last axis ("network in network", a 1x1 conv).

    Output at a position can NOT see any other position.
    """

    features: int
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x_NC: jax.Array) -> jax.Array:
        v = self.param("v", direction_init, (x_NC.shape[-1], self.features))
        y = x_NC @ (v * jax.lax.rsqrt(jnp.sum(v * v, axis=0)))
        return _data_dependent_affine(self, y, self.init_scale)


def down_shifted_conv(features, kernel_size=(2, 3), strides=1, init_scale=1.0, name=None,
                      conv_impl="auto"):
    """k_h x k_w convolution over rows i - k_h + 1 .. i, centred on column j.

    Output (i, j) can NOT see any row below i. (It sees row i itself: follow
    it with `layers.down_shift` for strictly earlier rows.) With `strides=2`
    output (i, j) reads input rows 2i - k_h + 1 .. 2i.
    """
    kh, kw = kernel_size
    pad = ((kh - 1, 0), ((kw - 1) // 2, (kw - 1) // 2))
    return WNConv(features, kernel_size, pad, strides, init_scale=init_scale, name=name,
                  conv_impl=conv_impl)


def down_right_shifted_conv(features, kernel_size=(2, 2), strides=1, init_scale=1.0, name=None,
                            conv_impl="auto"):
    """k_h x k_w convolution over rows i - k_h + 1 .. i and columns j - k_w + 1 .. j.

    Output (i, j) can NOT see rows below i nor columns right of j (in any row).
    """
    kh, kw = kernel_size
    pad = ((kh - 1, 0), (kw - 1, 0))
    return WNConv(features, kernel_size, pad, strides, init_scale=init_scale, name=name,
                  conv_impl=conv_impl)


def down_shifted_conv_transpose(features, kernel_size=(2, 3)) -> WNConv:
    """Stride-2 upsampling: output row r reads input rows i with 2i <= r (and 2i > r - k_h).

    Output (r, c) can NOT see input rows i > r / 2: if input row i only saw
    image rows < 2i, output row r only sees image rows < r.
    """
    kh, kw = kernel_size
    pad = ((kh - 1, 1), ((kw - 1) // 2, (kw - 1) // 2 + 1))
    return WNConv(features, kernel_size, pad, input_dilation=2)


def down_right_shifted_conv_transpose(features, kernel_size=(2, 2)) -> WNConv:
    """Stride-2 upsampling: output (r, c) reads inputs (i, j) with 2i <= r and 2j <= c.

    Output (r, c) can NOT see input rows i > r / 2 nor columns j > c / 2: an
    input that only saw pixels before (2i, 2j) in raster order gives outputs
    that only see pixels before (r, c).
    """
    kh, kw = kernel_size
    pad = ((kh - 1, 1), (kw - 1, 1))
    return WNConv(features, kernel_size, pad, input_dilation=2)


def concat_elu(x: jax.Array) -> jax.Array:
    """ELU of [x, -x] on the last axis (doubles the features)."""
    return jax.nn.elu(jnp.concatenate([x, -x], axis=-1))


NONLINEARITIES = {"concat_elu": concat_elu, "elu": jax.nn.elu}


class GatedResnet(nn.Module):
    """`x + a * sigmoid(b)`, `[a, b] = conv(dropout(f(conv(f(x)) + nin(f(aux)))))`, f = concat_elu.

    `conv` is "down" (2x3 down-shifted), "down_right" (2x2 down-right-shifted)
    or "nin" (1x1). `aux` (same spatial size) enters through a 1x1 layer
    before the gate: a skip input from another stream, or attention output.
    `label_BK` adds a learned per-class bias to both gate halves. Output
    (i, j) can NOT see what the chosen conv can not see in x, nor positions of
    `aux` other than (i, j). `nonlinearity="elu"` is the released PixelSNAIL's.
    """

    conv: str
    dropout_rate: float = 0.0
    nonlinearity: str = "concat_elu"
    conv_impl: str = "auto"

    def _conv(self, features, init_scale=1.0, name=None):
        impl = self.conv_impl
        if self.conv == "down":
            return down_shifted_conv(features, init_scale=init_scale, name=name, conv_impl=impl)
        if self.conv == "down_right":
            return down_right_shifted_conv(features, init_scale=init_scale, name=name,
                                           conv_impl=impl)
        return WNDense(features, init_scale, name=name)

    @nn.compact
    def __call__(self, x, aux=None, label_BK=None, train: bool = False):
        f = NONLINEARITIES[self.nonlinearity]
        features = x.shape[-1]
        h = self._conv(features, name="conv_in")(f(x))
        if aux is not None:
            h = h + WNDense(features, name="aux_in")(f(aux))
        h = f(h)
        if train and self.dropout_rate > 0:
            h = dropout(self.make_rng("dropout"), h, self.dropout_rate)
        h = self._conv(2 * features, RESIDUAL_INIT_SCALE, name="gate_out")(h)
        if label_BK is not None:
            bias = nn.Dense(2 * features, use_bias=False, kernel_init=_label_init)
            h = h + bias(label_BK)[:, None, None, :]
        a, b = jnp.split(h, 2, axis=-1)
        return x + a * jax.nn.sigmoid(b)


def pixel_inputs(x_BHWC: jax.Array, num_levels: int) -> tuple[jax.Array, jax.Array]:
    """(x in [-1, 1], the same with a channel of ones that tells the image from zero padding)."""
    x = layers.scale_to_unit(x_BHWC, num_levels)
    return x, jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)


def up_left_stream(x_pad: jax.Array, features: int, conv_impl: str = "auto") -> jax.Array:
    """PixelCNN++'s first "up and to the left" features: each pixel sees only earlier pixels.

    Output (i, j) can NOT see pixel (i, j) itself nor any later pixel in
    raster order: rows above via a down-shifted 1x3 conv, the row's earlier
    pixels via a right-shifted 2x1 conv.
    """
    above = layers.down_shift(down_shifted_conv(features, (1, 3), conv_impl=conv_impl)(x_pad))
    left = layers.right_shift(down_right_shifted_conv(features, (2, 1), conv_impl=conv_impl)(x_pad))
    return above + left

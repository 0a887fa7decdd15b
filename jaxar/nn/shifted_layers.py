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

import contextlib
import contextvars
import dataclasses
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
    randomness: XLA:CPU compiles every threefry draw separately and slowly, which adds
    up to minutes for a paper-sized model; this costs a few fused integer ops.
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


def fan_in_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """N(0, 1 / fan_in) weights (fan_in: the product of all axes but the last) from
    `direction_init`: a plain layer's initializer without a threefry draw to compile."""
    return direction_init(key, shape, dtype) * (1.0 / math.prod(shape[:-1])) ** 0.5


def dropout(key, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: zeroes each element with probability `rate` (mask from `hash_bits`)."""
    threshold = jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    keep = hash_bits(key, x.size).reshape(x.shape) >= threshold
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


_ABSTRACT_INIT = contextvars.ContextVar("jaxar_abstract_init", default=False)


@contextlib.contextmanager
def abstract_init():
    """Within it, an `init` traced only for its variables' shapes and dtypes (under
    `jax.eval_shape`) computes no initial values: the initializers of these layers are
    zeros and data-dependent init takes no statistics, whose tracing would be spent on
    values nobody reads."""
    token = _ABSTRACT_INIT.set(True)
    try:
        yield
    finally:
        _ABSTRACT_INIT.reset(token)


def _computes_initial_values(module: nn.Module) -> bool:
    return module.is_initializing() and not _ABSTRACT_INIT.get()


def shape_only(module: nn.Module, init):
    """`init` where `module` computes initial values; zeros of the same shape and dtype
    under `abstract_init`, where tracing a direction's hash and Box-Muller would be spent
    on values nobody reads."""
    return init if _computes_initial_values(module) else nn.initializers.zeros


def _label_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """N(0, 0.05^2) per-class gate biases, as in the released code."""
    return 0.05 * direction_init(key, shape, dtype)


def wn_kernel(v: jax.Array) -> jax.Array:
    """Weight norm's direction `V / ||V||`, the norm over all axes but the last (output) one."""
    return v * jax.lax.rsqrt(jnp.sum(v * v, axis=tuple(range(v.ndim - 1))))


def wn_affine(y: jax.Array, g: jax.Array, b: jax.Array) -> jax.Array:
    """A weight-normalized layer's output from its pre-activation: `y * g + b`."""
    return y * g + b


def _data_dependent_affine(module: nn.Module, y: jax.Array, init_scale: float) -> jax.Array:
    """`y * g + b`; at init g, b make every feature of y zero-mean with std `init_scale`."""
    # Under abstract_init: zeros of y's dtype, the dtype the statistics would have.
    g_init = b_init = lambda *_: jnp.zeros(y.shape[-1:], y.dtype)
    if _computes_initial_values(module):
        axes = tuple(range(y.ndim - 1))
        scale = init_scale / jnp.sqrt(jnp.var(y, axis=axes) + INIT_EPS)
        shift = -jnp.mean(y, axis=axes) * scale
        g_init, b_init = (lambda *_: scale), (lambda *_: shift)
    g = layers.param(module, "g", g_init, (y.shape[-1],))
    b = layers.param(module, "b", b_init, (y.shape[-1],))
    return wn_affine(y, g, b)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a shifted convolution pads (and dilates) its input, hence what each output reads.

    The layer convolves, VALID, its input dilated by `dilation` (zeros between
    positions: a transposed convolution) and zero-padded by `top`, `bottom`, `left`,
    `right`, with window strides `stride`. On that padded map ("input map") input
    position (a, b) sits at `input_at(a, b)`, and output (r, c) is the kh x kw window
    at `window_at(r, c)`. The shifted layers below are `WNConv`s of these geometries,
    which also lay out their decoding caches by them: the padding of each kind of layer
    is written here only.
    """

    kh: int
    kw: int
    top: int
    bottom: int
    left: int
    right: int
    stride: int = 1
    dilation: int = 1

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return ((self.top, self.bottom), (self.left, self.right))

    def input_at(self, a, b):
        """Where input position (a, b) sits on the input map."""
        return (self.top + self.dilation * a, self.left + self.dilation * b)

    def window_at(self, r, c):
        """Top-left corner, on the input map, of output (r, c)'s window."""
        return (self.stride * r, self.stride * c)

    def map_shape(self, batch: int, height: int, width: int, channels: int):
        """Shape of the input map of a `[batch, height, width, channels]` input."""
        rows = self.top + self.dilation * (height - 1) + 1 + self.bottom
        cols = self.left + self.dilation * (width - 1) + 1 + self.right
        return (batch, rows, cols, channels)


# The default kernels of the shifted convolutions (the released code's).
DOWN_KERNEL = (2, 3)
DOWN_RIGHT_KERNEL = (2, 2)


def down_geometry(kernel_size=DOWN_KERNEL, strides: int = 1) -> Geometry:
    """`down_shifted_conv`'s: k_h - 1 rows on top, the columns centred."""
    kh, kw = kernel_size
    return Geometry(kh, kw, kh - 1, 0, (kw - 1) // 2, (kw - 1) // 2, stride=strides)


def down_right_geometry(kernel_size=DOWN_RIGHT_KERNEL, strides: int = 1) -> Geometry:
    """`down_right_shifted_conv`'s: k_h - 1 rows on top, k_w - 1 columns on the left."""
    kh, kw = kernel_size
    return Geometry(kh, kw, kh - 1, 0, kw - 1, 0, stride=strides)


def down_transpose_geometry(kernel_size=DOWN_KERNEL) -> Geometry:
    """`down_shifted_conv_transpose`'s: the input dilated by 2, one more row and column after."""
    kh, kw = kernel_size
    return Geometry(kh, kw, kh - 1, 1, (kw - 1) // 2, (kw - 1) // 2 + 1, dilation=2)


def down_right_transpose_geometry(kernel_size=DOWN_RIGHT_KERNEL) -> Geometry:
    """`down_right_shifted_conv_transpose`'s: the input dilated by 2."""
    kh, kw = kernel_size
    return Geometry(kh, kw, kh - 1, 1, kw - 1, 1, dilation=2)


class WNConv(nn.Module):
    """Weight-normalized 2-D convolution of a `Geometry` (padding, stride, dilation), NHWC.

    `geometry.dilation=2` makes it a stride-2 transposed convolution (zeros
    between input pixels). What an output sees is set by the padding: see the
    shifted wrappers below. `shift` (sr, sc), each 0 or 1, moves the output sr rows
    down and sc columns right, zeros entering (`layers.down_shift`,
    `layers.right_shift`). `conv_impl` (`jaxar.nn.fast_conv`) applies to stride-1
    convolutions; strided and transposed ones always run as XLA's convolution.

    Decoding (the "cache" collection of `jaxar.nn.cache`, position (i, j) in the
    layer's input resolution): the layer keeps its input map, padded and dilated as
    its geometry lays it out. Given its input at (i, j), `[B, 1, 1, C]` (row i,
    `[B, 1, W, C]`, if it `decodes_rows`), it writes it there; given its full input
    `[B, H, W, C]` it reads that instead; given None it writes nothing. It then
    returns the output whose window (`Geometry.window_at`) it reaches from (i, j):
    output (i, j) (of a shifted layer (i - sr, j - sc)), of a stride-s layer
    (i // s, j // s), or row i of it; `output=False` only writes. A transposed layer
    is written at its input's position and read at its output's.
    """

    features: int
    geometry: Geometry
    init_scale: float = 1.0
    conv_impl: str = "auto"
    shift: tuple[int, int] = (0, 0)
    decode_rows: bool | None = None  # None: `decodes_rows` from the geometry

    @property
    def decodes_rows(self) -> bool:
        """Whether decoding runs a row at a time: by default when the window of output
        (i, j) reads input right of (i, j) in row i (not for a layer shifted down)."""
        if self.decode_rows is not None:
            return self.decode_rows
        geom = self.geometry
        return geom.kw - 1 > geom.left and self.shift[0] == 0

    def __call__(self, x_BHWC: jax.Array | None, output: bool = True) -> jax.Array | None:
        y = self.conv(x_BHWC, output)
        if y is None or self.shift == (0, 0):
            return y
        if self.has_variable("cache", "position"):  # decoding: `conv` read the shifted window
            i, j = self.get_variable("cache", "position")
            return jnp.where((i >= self.shift[0]) & (j >= self.shift[1]), y, 0.0)
        if self.shift[0]:
            y = layers.down_shift(y)
        if self.shift[1]:
            y = layers.right_shift(y)
        return y

    @nn.compact
    def conv(self, x_BHWC: jax.Array | None, output: bool = True) -> jax.Array | None:
        """The weight-normalized convolution before the shift (decoding: at the position
        the shift reads)."""
        geom = self.geometry
        if self.has_variable("cache", "position"):
            return self._decode(x_BHWC, output)
        if self.is_mutable_collection("cache") and not self.is_initializing():
            self.variable("cache", "position", lambda: jnp.zeros((2,), jnp.int32))
            self.variable("cache", "inputs", jnp.zeros, geom.map_shape(*x_BHWC.shape),
                          x_BHWC.dtype)
        kernel = wn_kernel(self._direction(x_BHWC.shape[-1]))
        if geom.stride == geom.dilation == 1:
            impl = fast_conv.resolve_impl(self.conv_impl, shifted=True)
            y = fast_conv.conv(x_BHWC, kernel, None, 1, impl, geom.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x_BHWC,
                kernel,
                window_strides=(geom.stride, geom.stride),
                padding=geom.padding,
                lhs_dilation=(geom.dilation, geom.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return _data_dependent_affine(self, y, self.init_scale)

    def _direction(self, in_features: int) -> jax.Array:
        geom = self.geometry
        return layers.param(self, "v", shape_only(self, direction_init),
                            (geom.kh, geom.kw, in_features, self.features))

    def _decode(self, x_BHWC, output):
        geom, rows = self.geometry, self.decodes_rows
        i, j = self.get_variable("cache", "position")
        inputs = self.variable("cache", "inputs")
        padded = inputs.value
        full = x_BHWC is not None and geom.map_shape(*x_BHWC.shape) == padded.shape
        # The whole input (e.g. the image) is read, not cached; an input of one row is also
        # a row or position input, which a later call may only read: cached.
        if x_BHWC is not None and (not full or x_BHWC.shape[1] == 1):
            if geom.dilation > 1:  # zeros between the inputs
                inner = geom.dilation - 1
                config = [(0, 0, 0), (0, 0, 0), (0, 0, inner if full or rows else 0),
                          (0, 0, 0)]
                x_BHWC = jax.lax.pad(x_BHWC, jnp.zeros((), x_BHWC.dtype), config)
            start = (0, *geom.input_at(0 if full else i, 0 if rows or full else j), 0)
            padded = jax.lax.dynamic_update_slice(padded, x_BHWC.astype(padded.dtype), start)
            inputs.value = padded
            full = False
        if not output:
            return None
        r = jnp.maximum(i - self.shift[0], 0) // geom.stride
        c = jnp.maximum(j - self.shift[1], 0) // geom.stride
        top, left = geom.window_at(r, c)
        batch, _, cols, channels = padded.shape
        if full:
            window = _window_of(x_BHWC.astype(padded.dtype), geom, top, None if rows else left)
        elif rows:
            window = jax.lax.dynamic_slice(padded, (0, top, 0, 0), (batch, geom.kh, cols, channels))
        else:
            window = jax.lax.dynamic_slice(padded, (0, top, left, 0),
                                           (batch, geom.kh, geom.kw, channels))
        kernel = wn_kernel(self._direction(channels))
        return _data_dependent_affine(self, _window_conv(window, kernel, (1, geom.stride)),
                                      self.init_scale)


def _window_of(x_BHWC: jax.Array, geom: Geometry, top, left) -> jax.Array:
    """The window at (top, left) of the input map of x (stride-1 geometry), or the strip of
    its kh rows at `top` with `left=None`, cut from x without padding the whole map."""
    height, width = x_BHWC.shape[1:3]
    rows = top - geom.top + jnp.arange(geom.kh)
    inside = ((rows >= 0) & (rows < height))[None, :, None, None]
    strip = jnp.where(inside, jnp.take(x_BHWC, jnp.clip(rows, 0, height - 1), axis=1), 0.0)
    if left is None:
        return jnp.pad(strip, ((0, 0), (0, 0), (geom.left, geom.right), (0, 0)))
    cols = left - geom.left + jnp.arange(geom.kw)
    inside = ((cols >= 0) & (cols < width))[None, None, :, None]
    return jnp.where(inside, jnp.take(strip, jnp.clip(cols, 0, width - 1), axis=2), 0.0)


def _window_conv(window: jax.Array, kernel: jax.Array, strides=(1, 1)) -> jax.Array:
    """VALID convolution of a window of a layer's input map: a kernel-sized window gives
    one position `[B, 1, 1, O]` (a matrix product), a k_h-row strip a row."""
    if window.shape[1:3] == kernel.shape[:2]:
        batch, features = window.shape[0], kernel.shape[-1]
        return (window.reshape(batch, -1) @ kernel.reshape(-1, features)).reshape(
            batch, 1, 1, -1)
    return jax.lax.conv_general_dilated(window, kernel, strides, "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class WNDense(nn.Module):
    """Weight-normalized dense layer on the last axis ("network in network", a 1x1 conv).

    Output at a position can NOT see any other position.
    """

    features: int
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x_NC: jax.Array) -> jax.Array:
        v = layers.param(self, "v", shape_only(self, direction_init),
                         (x_NC.shape[-1], self.features))
        return _data_dependent_affine(self, x_NC @ wn_kernel(v), self.init_scale)


def down_shifted_conv(features, kernel_size=DOWN_KERNEL, strides=1, init_scale=1.0, name=None,
                      conv_impl="auto"):
    """k_h x k_w convolution over rows i - k_h + 1 .. i, centred on column j.

    Output (i, j) can NOT see any row below i. (It sees row i itself: follow
    it with `layers.down_shift` for strictly earlier rows.) With `strides=2`
    output (i, j) reads input rows 2i - k_h + 1 .. 2i.
    """
    return WNConv(features, down_geometry(kernel_size, strides), init_scale, conv_impl,
                  name=name)


def down_right_shifted_conv(features, kernel_size=DOWN_RIGHT_KERNEL, strides=1, init_scale=1.0,
                            name=None, conv_impl="auto"):
    """k_h x k_w convolution over rows i - k_h + 1 .. i and columns j - k_w + 1 .. j.

    Output (i, j) can NOT see rows below i nor columns right of j (in any row).
    """
    return WNConv(features, down_right_geometry(kernel_size, strides), init_scale, conv_impl,
                  name=name)


def down_shifted_conv_transpose(features, kernel_size=DOWN_KERNEL, name=None) -> WNConv:
    """Stride-2 upsampling: output row r reads input rows i with 2i <= r (and 2i > r - k_h).

    Output (r, c) can NOT see input rows i > r / 2: if input row i only saw
    image rows < 2i, output row r only sees image rows < r.
    """
    return WNConv(features, down_transpose_geometry(kernel_size), name=name)


def down_right_shifted_conv_transpose(features, kernel_size=DOWN_RIGHT_KERNEL, name=None) -> WNConv:
    """Stride-2 upsampling: output (r, c) reads inputs (i, j) with 2i <= r and 2j <= c.

    Output (r, c) can NOT see input rows i > r / 2 nor columns j > c / 2: an
    input that only saw pixels before (2i, 2j) in raster order gives outputs
    that only see pixels before (r, c).
    """
    return WNConv(features, down_right_transpose_geometry(kernel_size), name=name)


def concat_elu(x: jax.Array) -> jax.Array:
    """ELU of [x, -x] on the last axis (doubles the features).

    The same values, bit for bit, as `jax.nn.elu(jnp.concatenate([x, -x], -1))` with half
    its exponentials: of x and -x only the one that is not positive needs `expm1`, and it
    is `expm1(x)` where x <= 0, `expm1(-x)` where x > 0 (concat_elu is a visible share
    of the PixelCNN++ train step on CPU; docs/benchmarks.md has the profile).
    """
    positive = x > 0
    e = jnp.expm1(jnp.where(positive, -x, x))
    return jnp.concatenate([jnp.where(positive, x, e), jnp.where(positive, e, -x)], axis=-1)


NONLINEARITIES = {"concat_elu": concat_elu, "elu": jax.nn.elu}
# The convolutions of `GatedResnet(conv)` other than "nin" (1x1, `WNDense`).
RESNET_GEOMETRIES = {"down": down_geometry(), "down_right": down_right_geometry()}


class GatedResnet(nn.Module):
    """`x + a * sigmoid(b)`, `[a, b] = conv(dropout(f(conv(f(x)) + nin(f(aux)))))`, f = concat_elu.

    `conv` is "down" (2x3 down-shifted), "down_right" (2x2 down-right-shifted),
    see `RESNET_GEOMETRIES`, or "nin" (1x1). `aux` (same spatial size) enters
    through a 1x1 layer before the gate: a skip input from another stream, or
    attention output. `label_BK` adds a learned per-class bias to both gate halves,
    and `cond_BHWD` (a conditioning map of x's size, e.g. a prior's coarser codes) a
    1x1 projection of it at the same position. Output (i, j) can NOT see what the
    chosen conv can not see in x, nor positions of `aux` or `cond_BHWD` other than
    (i, j). `nonlinearity="elu"` is the released PixelSNAIL's. Sub-layers: "conv_in",
    "aux_in" (with aux), "gate_out", "label_bias" (with labels), "cond_in" (with cond).
    Decoding (`WNConv`'s cache), x, aux and cond are the cache's position or row.
    """

    conv: str
    dropout_rate: float = 0.0
    nonlinearity: str = "concat_elu"
    conv_impl: str = "auto"

    def _conv(self, features, init_scale=1.0, name=None):
        if self.conv == "nin":
            return WNDense(features, init_scale, name=name)
        return WNConv(features, RESNET_GEOMETRIES[self.conv], init_scale, self.conv_impl,
                      name=name)

    @nn.compact
    def __call__(self, x, aux=None, label_BK=None, train: bool = False, cond_BHWD=None):
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
            bias = nn.Dense(2 * features, use_bias=False, kernel_init=_label_init,
                            name="label_bias")
            h = h + bias(label_BK)[:, None, None, :]
        if cond_BHWD is not None:  # starts as small as the residual branch
            h = h + WNDense(2 * features, RESIDUAL_INIT_SCALE, name="cond_in")(cond_BHWD)
        return gate(x, h)


def gate(x: jax.Array, h: jax.Array) -> jax.Array:
    """A gated resnet's output `x + a * sigmoid(b)`, `[a, b] = h`."""
    a, b = jnp.split(h, 2, axis=-1)
    return x + a * jax.nn.sigmoid(b)


def pixel_inputs(x_BHWC: jax.Array, num_levels: int) -> tuple[jax.Array, jax.Array]:
    """(x in [-1, 1], the same `with_ones`)."""
    x = layers.scale_to_unit(x_BHWC, num_levels)
    return x, with_ones(x)


def with_ones(x_BHWC: jax.Array) -> jax.Array:
    """x with a channel of ones, which tells the image from the zero padding of the
    shifted convolutions (and from the empty input before the first pixel)."""
    return jnp.concatenate([x_BHWC, jnp.ones_like(x_BHWC[..., :1])], axis=-1)


# `up_left_stream`'s two layers: the rows above (1x3), the row's earlier pixels (2x1).
UP_LEFT_ABOVE = down_geometry((1, 3))
UP_LEFT_LEFT = down_right_geometry((2, 1))


def up_left_stream(x_pad: jax.Array, features: int, conv_impl: str = "auto",
                   names: tuple[str | None, str | None] = (None, None)) -> jax.Array:
    """PixelCNN++'s first "up and to the left" features: each pixel sees only earlier pixels.

    Output (i, j) can NOT see pixel (i, j) itself nor any later pixel in
    raster order: rows above via a down-shifted 1x3 conv, the row's earlier
    pixels via a right-shifted 2x1 conv (`UP_LEFT_ABOVE`, `UP_LEFT_LEFT`; their
    layer names: `names`). Decoding, it reads the full `x_pad` at the cache's pixel.
    """
    above, left = up_left_layers(features, conv_impl, names)
    return above(x_pad) + left(x_pad)


def up_left_layers(features: int, conv_impl: str = "auto",
                   names: tuple[str | None, str | None] = (None, None)) -> tuple[WNConv, WNConv]:
    """`up_left_stream`'s two layers, their outputs shifted: the rows above (down by one),
    the row's earlier pixels (right by one)."""
    above_name, left_name = names
    return (WNConv(features, UP_LEFT_ABOVE, conv_impl=conv_impl, shift=(1, 0), name=above_name),
            WNConv(features, UP_LEFT_LEFT, conv_impl=conv_impl, shift=(0, 1), name=left_name))


def check_dropout_rate(rate) -> None:
    """model.dropout_rate of the gated resnets: in [0, 1)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout_rate must lie in [0, 1), got {rate}")

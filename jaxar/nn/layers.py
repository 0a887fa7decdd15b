"""Causal building blocks: masked convolutions and dense layers, the gated stacks, shifts.

Conventions: images are NHWC, generated in raster order (row by row, left to
right, and within a pixel channel by channel). A layer's docstring says which
inputs its outputs can NOT see; `tests/test_layers.py` proves each claim with
gradients.

Channel groups: to factorize a pixel over its C sub-pixels (R, G, B), the
features of every layer are split into C groups. `group_ids(n, C)` assigns
feature f of n to group `f * C // n` (contiguous blocks); a layer whose output
is several stacked tensors (e.g. the two halves of a gate) repeats the groups
per block, so every block sees the same group structure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.nn import cache, fast_conv

Dtype = jnp.dtype


def param(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...]) -> jax.Array:
    """`module.param(name, init, shape)`, the way every layer here creates a parameter.

    A parameter that exists (every apply) is read and its shape compared to `shape`
    directly: flax's `param` would trace `init` under `jax.eval_shape` on every apply
    only to learn that shape. A wrong shape raises flax's `ScopeParamShapeError` either
    way.
    """
    if module.is_initializing() or not module.has_variable("params", name):
        return module.param(name, init, shape)
    value = module.get_variable("params", name)
    if np.shape(value) != tuple(shape):
        raise flax.errors.ScopeParamShapeError(name, module.scope.path_text, np.shape(value),
                                               tuple(shape))
    return value


def group_ids(n: int, num_groups: int, blocks: int = 1) -> np.ndarray:
    """Channel group of each of `n` features, `blocks` equal blocks repeated."""
    if n % blocks or (n // blocks) % num_groups:
        raise ValueError(
            f"features={n} must split into {blocks} block(s) of a multiple of "
            f"{num_groups} channel groups"
        )
    per_block = n // blocks
    return np.tile(np.arange(per_block) * num_groups // per_block, blocks)


@functools.cache
def conv_mask(
    kernel_hw: tuple[int, int],
    centre: tuple[int, int],
    mask_type: str,
    in_groups: tuple[int, ...],
    out_groups: tuple[int, ...],
) -> np.ndarray:
    """Raster-causal mask `[kh, kw, in, out]` for a kernel whose tap `centre` is the output pixel.

    Taps in rows above the centre and to its left in the centre row are kept;
    taps below or to the right are zeroed. At the centre tap, input group i
    may feed output group o when i < o (type "A") or i <= o (type "B").
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    kh, kw = kernel_hw
    ci, cj = centre
    rows, cols = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    spatial = (rows < ci) | ((rows == ci) & (cols < cj))
    gi = np.asarray(in_groups)[:, None]
    go = np.asarray(out_groups)[None, :]
    centre_ok = gi < go if mask_type == "A" else gi <= go
    mask = np.broadcast_to(spatial[:, :, None, None], (kh, kw, len(in_groups), len(out_groups)))
    mask = mask.copy()
    mask[ci, cj] = centre_ok
    return mask  # bool: `kernel * mask` keeps the kernel's dtype (float32 or bfloat16)


class MaskedConv2D(nn.Module):
    """k x k convolution masked for raster order ("A": strict, "B": includes the centre).

    Output (i, j, group o) can NOT see: any pixel in a row below i; pixels
    (i, j') with j' > j; at pixel (i, j) itself, input groups > o (type B) or
    >= o (type A). With one group, type A excludes the whole centre pixel.

    `conv_impl` (`jaxar.nn.fast_conv`): "plain" multiplies a dense kernel by the
    mask; "im2col" and "split" never compute the masked taps; "auto" picks per
    backend.
    Decodes one pixel at a time under `jaxar.nn.cache`.
    """

    features: int
    kernel_size: int
    mask_type: str = "B"
    dilation: int = 1
    num_groups: int = 1
    in_blocks: int = 1
    out_blocks: int = 1
    use_bias: bool = True
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        in_features = x_BHWC.shape[-1]
        mask = conv_mask(
            (k, k),
            (k // 2, k // 2),
            self.mask_type,
            tuple(group_ids(in_features, self.num_groups, self.in_blocks)),
            tuple(group_ids(self.features, self.num_groups, self.out_blocks)),
        )
        kernel = param(self, "kernel", nn.initializers.lecun_normal(),
                       (k, k, in_features, self.features))
        pad = self.dilation * (k // 2)
        window = cache.neighbourhood(self, x_BHWC, pad, pad, pad)
        impl = "im2col" if window is not None else fast_conv.resolve_impl(
            self.conv_impl, masked=True
        )
        if impl == "plain":
            y = jax.lax.conv_general_dilated(
                x_BHWC,
                kernel * mask,
                window_strides=(1, 1),
                padding=((pad, pad), (pad, pad)),
                rhs_dilation=(self.dilation, self.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        else:  # the rows below the centre are all masked: pad above only and drop them
            rows = k // 2 + 1
            x, padding = (window, ((0, 0), (0, 0))) if window is not None else (
                x_BHWC, ((pad, 0), (pad, pad))
            )
            y = fast_conv.conv(x, kernel[:rows], mask[:rows], self.dilation, impl, padding)
        if self.use_bias:
            y = y + param(self, "bias", nn.initializers.zeros, (self.features,))
        return y


class MaskedDense(nn.Module):
    """Dense layer whose connectivity is given per call by a 0/1 `mask [in, out]`.

    Output unit o can NOT see input units i with `mask[i, o] == 0`.
    """

    features: int

    @nn.compact
    def __call__(self, x_BI: jax.Array, mask_IO: jax.Array) -> jax.Array:
        kernel = param(self, "kernel", nn.initializers.lecun_normal(),
                       (x_BI.shape[-1], self.features))
        bias = param(self, "bias", nn.initializers.zeros, (self.features,))
        return x_BI @ (kernel * mask_IO) + bias

    def add_input_row(self, y_BO, delta_B, i, mask_IO):
        """`y` plus the change of the output when input unit i changes by `delta`."""
        row_O = self.get_variable("params", "kernel")[i] * jnp.asarray(mask_IO)[i]
        return y_BO + delta_B[:, None] * row_O

    def output_columns(self, x_BI, start, size, mask_IO):
        """Output units `start .. start + size - 1` only, `[B, size]`."""
        kernel = jax.lax.dynamic_slice_in_dim(self.get_variable("params", "kernel"), start, size, 1)
        mask = jax.lax.dynamic_slice_in_dim(jnp.asarray(mask_IO), start, size, 1)
        bias = jax.lax.dynamic_slice_in_dim(self.get_variable("params", "bias"), start, size)
        return x_BI @ (kernel * mask) + bias


def down_shift(x_BHWC: jax.Array) -> jax.Array:
    """Moves every row one down (row 0 becomes zeros): row i then sees only rows < i."""
    return jnp.pad(x_BHWC, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def right_shift(x_BHWC: jax.Array) -> jax.Array:
    """Moves every column one right (column 0 becomes zeros)."""
    return jnp.pad(x_BHWC, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


class VerticalStackConv(nn.Module):
    """Gated PixelCNN vertical stack: a (k//2 + 1) x k convolution over the rows up to i.

    Implemented by padding k//2 rows on top and cropping, not by masking.
    Output (i, j) can NOT see any row below i (it does see all of row i within
    the kernel width, which is why it reaches the horizontal stack only through
    `down_shift`). Decodes a whole row at a time under `jaxar.nn.cache`.
    """

    features: int
    kernel_size: int
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        half = self.kernel_size // 2
        x = cache.neighbourhood(self, x_BHWC, half, half, half, whole_rows=True)
        impl = "im2col" if x is not None else self.conv_impl
        if x is None:
            x = jnp.pad(x_BHWC, ((0, 0), (half, 0), (half, half), (0, 0)))
        conv_fn = fast_conv.conv_general_dilated_fn(impl)
        return nn.Conv(
            self.features, (half + 1, self.kernel_size), padding="VALID",
            conv_general_dilated=conv_fn,
        )(x)


class HorizontalStackConv(nn.Module):
    """Gated PixelCNN horizontal stack: a 1 x (k//2 + 1) convolution over columns up to j.

    Implemented by padding k//2 columns on the left. The last tap is the
    current pixel: with one channel group it is dropped for type "A" (a right
    shift) and kept for "B"; with several groups it is masked per group as in
    `MaskedConv2D`. Output (i, j, group o) can NOT see other rows, columns
    > j, or current-pixel groups > o (B) / >= o (A). Decodes one pixel at a
    time under `jaxar.nn.cache`.
    """

    features: int
    kernel_size: int
    mask_type: str = "B"
    num_groups: int = 1
    in_blocks: int = 1
    out_blocks: int = 1
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        half = self.kernel_size // 2
        x = cache.neighbourhood(self, x_BHWC, 0, half, 0)
        impl = "im2col" if x is not None else self.conv_impl
        if x is None:
            x = jnp.pad(x_BHWC, ((0, 0), (0, 0), (half, 0), (0, 0)))
        conv_fn = fast_conv.conv_general_dilated_fn(impl)
        if self.num_groups == 1 and self.mask_type == "A":  # a right shift: drop the last tap
            return nn.Conv(
                self.features, (1, half), padding="VALID", conv_general_dilated=conv_fn
            )(x[:, :, :-1])
        if self.num_groups == 1:
            return nn.Conv(
                self.features, (1, half + 1), padding="VALID", conv_general_dilated=conv_fn
            )(x)
        in_features = x_BHWC.shape[-1]
        mask = conv_mask(
            (1, half + 1),
            (0, half),
            self.mask_type,
            tuple(group_ids(in_features, self.num_groups, self.in_blocks)),
            tuple(group_ids(self.features, self.num_groups, self.out_blocks)),
        )
        kernel = param(self, "kernel", nn.initializers.lecun_normal(),
                       (1, half + 1, in_features, self.features))
        bias = param(self, "bias", nn.initializers.zeros, (self.features,))
        impl = fast_conv.resolve_impl(impl)
        return fast_conv.conv(x, kernel, mask, 1, impl) + bias


class GatedActivation(nn.Module):
    """`tanh(a) * sigmoid(b)` of the two halves of the last axis, plus optional conditioning.

    `h_BD` (e.g. a class embedding) adds a learned per-feature bias to both
    halves; `s_BHWD` (a spatial conditioning map at the input's resolution)
    adds a 1x1 projection. Both are conditioning inputs, so they can not break
    causality over the image. `x` must have an even number of features.
    """

    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BHWF, h_BD=None, s_BHWD=None) -> jax.Array:
        features = x_BHWF.shape[-1]
        if h_BD is not None:
            x_BHWF = x_BHWF + nn.Dense(features, use_bias=False)(h_BD)[:, None, None, :]
        if s_BHWD is not None:
            conv_fn = fast_conv.conv_general_dilated_fn(self.conv_impl)
            x_BHWF = x_BHWF + nn.Conv(
                features, (1, 1), use_bias=False, conv_general_dilated=conv_fn
            )(s_BHWD)
        a, b = jnp.split(x_BHWF, 2, axis=-1)
        return jnp.tanh(a) * jax.nn.sigmoid(b)


class CodeUpsampler(nn.Module):
    """Integer codes `[B, h, w, 1]` in [0, levels) -> features `[B, h * fh, w * fw, F]`.

    A learned code embedding, a transposed convolution by the factor `(fh, fw)`,
    ELU, a 3x3 convolution (so each position also reads the neighbouring codes),
    ELU. A conditioning map for a prior over finer codes (VQ-VAE-2): the codes are
    known before sampling starts, so every output may see the whole map.
    Sub-layers: "embed", "upsample", "conv"; `kernel_init` draws all their weights.
    """

    levels: int
    features: int
    factor: tuple[int, int]
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, codes_BhwC: jax.Array) -> jax.Array:
        init = self.kernel_init
        e = nn.Embed(self.levels, self.features, embedding_init=init, name="embed")(
            codes_BhwC[..., 0])
        e = nn.ConvTranspose(self.features, self.factor, strides=self.factor, kernel_init=init,
                             name="upsample")(e)
        e = nn.Conv(self.features, (3, 3), kernel_init=init, name="conv")(jax.nn.elu(e))
        return jax.nn.elu(e)


def scale_to_unit(x: jax.Array, num_levels: int, dtype: Dtype = jnp.float32) -> jax.Array:
    """Maps integer values in [0, num_levels) to floats in [-1, 1]."""
    return (2.0 * x.astype(dtype) / (num_levels - 1) - 1.0).astype(dtype)


def one_hot_labels(labels_B: jax.Array | None, num_classes: int) -> jax.Array | None:
    """One-hot float labels, or None for unconditional models."""
    if num_classes == 0 or labels_B is None:
        return None
    return jax.nn.one_hot(labels_B, num_classes)


def check_kernel_sizes(sizes: Sequence[int], name: str) -> None:
    for k in sizes:
        if k < 1 or k % 2 != 1:
            raise ValueError(f"{name} must be odd and positive, got {k}")

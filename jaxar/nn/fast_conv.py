"""Convolutions that never compute masked taps: a sum of shifted inputs times tap matrices.

A (masked) convolution is `y[i, j] = sum_t x[i + dr_t, j + dc_t] @ w_t` over its live taps
t only. The "im2col" implementation (`tap_conv`) computes exactly that, so a 7x7 type-B
convolution costs 25 taps, not 49, in the forward pass and in both gradients:

- forward: the T shifted copies of x gathered into patches `[..., T * I]` and one matmul
  with the stacked tap matrices `[T * I, O]`; kernels of at most `XLA_FORWARD_MAX_TAPS`
  live taps (3x3 masks, PixelCNN++'s 2x3 / 2x2 shifted kernels) on maps of at least
  `XLA_FORWARD_MIN_POSITIONS` outputs instead run XLA's convolution over the dense
  rectangles their taps form, and layers with few outputs
  (a network's last layer) take the output side: `x @ [w_1 .. w_T]`, then each tap's
  block is summed at its offset.
- backward: dy gathered once at the mirrored offsets, `g[m] = [dy[m - off_t]]_t` over
  x's positions, gives both gradients as matmuls: `dx = g @ [w_t^T]_t` and
  `dW = x^T @ g`. With no dx wanted (a network's data input) and fewer input than
  output features, dW comes from the patches of x instead.

Why not XLA's convolution on CPU: its gradients, the weight gradient above all, run far
below the machine's matmul speed, while its forward is fine for small kernels. Why
chunks: the patches of a whole batch are large (hundreds of MB for a 64->64 7x7 layer at
batch 128) and XLA:CPU pays a page fault for every page of a fresh buffer, so gathers run
over batch chunks of about `CHUNK_BYTES` and are recomputed, never stored. The weight
gradient is computed as `(x^T)(g)` with x^T materialized: XLA folds a transpose into a
contraction over the matmul's leading axis, which XLA:CPU runs in a slower generic kernel.

`conv_impl` ("auto" | "plain" | "im2col" | "split") selects the implementation for
the layers in `jaxar.nn.layers` and the stride-1 convolutions of `jaxar.nn.shifted_layers`;
"plain" is the dense masked `lax.conv_general_dilated`. "split" (raster-masked
convolutions only; other layers given it follow "auto") runs XLA's convolution on the
two dense parts of the mask, forward and gradients. "auto" is "im2col" on CPU and
"plain" on GPU and TPU, except for the shifted convolutions, which have no masked taps to
skip: "plain" on CPUs with AVX-512 too, where XLA's own convolution gradients are as fast
as the gathered ones (`resolve_impl`). The train-step timings behind these rules are in
docs/benchmarks.md (`benchmarks/train_throughput.py`, `benchmarks/torch_reference.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "plain", "im2col", "split")
CHUNK_BYTES = 24 * 2**20
_CHUNK_LIMIT = contextvars.ContextVar("chunk_bytes", default=CHUNK_BYTES)
OUTPUT_SIDE_RATIO = 4
XLA_FORWARD_MAX_TAPS = 9
XLA_FORWARD_MIN_POSITIONS = 64
_NHWC = ("NHWC", "HWIO", "NHWC")


def check_impl(impl: str) -> str:
    """Returns `impl` (the `model.conv_impl` config value) if it names an implementation."""
    if impl not in IMPLS:
        raise ValueError(f"model.conv_impl must be one of {list(IMPLS)}, got {impl!r}")
    return impl


def resolve_impl(impl: str, masked: bool = False, shifted: bool = False) -> str:
    """The implementation ("plain", "im2col" or, for masked layers, "split") for a layer.

    "split" applies to raster-masked convolutions only (`layers.MaskedConv2D`); other
    layers given "split" follow the "auto" rule. "auto" is "im2col" on CPU and "plain"
    elsewhere, except for `shifted` layers (the weight-normalized shifted convolutions of
    `jaxar.nn.shifted_layers`: 4 or 6 taps, none masked, so there is nothing to skip) on
    CPUs with AVX-512 (`cpu_has_avx512`), where XLA's own convolution gradients are as
    fast as the gathered ones (docs/benchmarks.md has the train-step timings).
    """
    if check_impl(impl) == "split" and not masked:
        impl = "auto"
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "plain"
    return "plain" if shifted and cpu_has_avx512() else "im2col"


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether this host's CPU has AVX-512 (its `avx512f` flag in Linux's /proc/cpuinfo;
    False where that cannot be read)."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.startswith("flags") and "avx512f" in line.split() for line in lines)


def pad_to_cover(x_BHWI, offsets, out_hw):
    """Zero-pads x so every tap of every output position lies inside it.

    Returns the padded x and the offsets into it (all >= 0).
    """
    _, height, width, _ = x_BHWI.shape
    out_h, out_w = out_hw
    drs, dcs = [o[0] for o in offsets], [o[1] for o in offsets]
    top, left = max(0, -min(drs)), max(0, -min(dcs))
    bottom = max(0, out_h - height + max(drs))
    right = max(0, out_w - width + max(dcs))
    x = jnp.pad(x_BHWI, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return x, tuple((dr + top, dc + left) for dr, dc in offsets)


def gather_patches(x_BHWI, offsets, out_hw) -> jax.Array:
    """`p[b, i, j, t*I:(t+1)*I] = x[b, i + dr_t, j + dc_t]`, `[B, Ho, Wo, T*I]`; every tap in x.

    One gather with static indices: on CPU it compiles and runs much faster than
    concatenating T slices. x comes padded (`pad_to_cover`) because a pad fused into
    the gather slows it down.
    """
    batch, _, width, features = x_BHWI.shape
    out_h, out_w = out_hw
    rows, cols = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    index = np.stack([(rows + dr) * width + cols + dc for dr, dc in offsets], axis=-1)
    flat = x_BHWI.reshape(batch, -1, features)
    patches = flat.at[:, index.reshape(-1).astype(np.int32)].get(mode="promise_in_bounds")
    return patches.reshape(batch, out_h, out_w, len(offsets) * features)


@contextlib.contextmanager
def chunk_bytes(limit: int):
    """Convolutions traced inside gather their patches over batch chunks of about `limit`
    bytes instead of `CHUNK_BYTES` (a huge limit: the whole batch in one chunk)."""
    token = _CHUNK_LIMIT.set(limit)
    try:
        yield
    finally:
        _CHUNK_LIMIT.reset(token)


def _chunk_size(batch: int, out_hw, width: int, itemsize: int, limit: int | None = None) -> int:
    """Images per chunk so a chunk's patches (`width` features per position) fit `limit`
    bytes (None: `CHUNK_BYTES`, or what `chunk_bytes` sets)."""
    per_image = math.prod(out_hw) * width * itemsize
    limit = _CHUNK_LIMIT.get() if limit is None else limit
    target = max(1, limit // per_image)
    num = -(-batch // target)
    return -(-batch // num)


def _split_chunks(a, chunk: int):
    """`[num, chunk, ...]`: the batch zero-padded to a whole number of chunks."""
    num = -(-a.shape[0] // chunk)
    a = jnp.pad(a, ((0, num * chunk - a.shape[0]),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape(num, chunk, *a.shape[1:])


def _map_chunks(fn, chunk: int, *arrays):
    """`fn` over batch chunks of `arrays`, results concatenated along the batch."""
    batch = arrays[0].shape[0]
    if chunk >= batch:
        return fn(*arrays)
    out = jax.lax.map(lambda xs: fn(*xs), tuple(_split_chunks(a, chunk) for a in arrays))
    return out.reshape(-1, *out.shape[2:])[:batch]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tap_conv(x_BHWI, w_TIO, offsets, out_hw) -> jax.Array:
    """`y[b, i, j] = sum_t x[b, i + dr_t, j + dc_t] @ w_TIO[t]`, `[B, *out_hw, O]`, zero outside x.

    `offsets` is a static tuple of `(dr, dc)` per tap; batch chunks bound the memory.
    The forward takes the cheapest of three exact ways, all over the live taps only:
    few output features (`O * OUTPUT_SIDE_RATIO <= I`, e.g. a network's last layer):
    `z = x @ [w_1 .. w_T]` (T * O features per position), then y sums each tap's
    block of z at its offset, so x is never gathered T times; few taps (at most
    `XLA_FORWARD_MAX_TAPS`, e.g. 3x3 masks, PixelCNN++'s 2x3 and 2x2 shifted
    kernels) and maps of at least `XLA_FORWARD_MIN_POSITIONS` outputs: XLA's
    convolution over the dense rectangles the taps form (its forward is fast; only its
    gradients are slow); otherwise the patch gather and one matmul. (On a cached
    sampler's window of a row or a pixel, the gather is far cheaper than XLA's convolution.)
    """
    num_taps, features_in, features_out = w_TIO.shape
    if features_out * OUTPUT_SIDE_RATIO <= features_in:
        return _output_side_conv(x_BHWI, w_TIO, offsets, out_hw)
    if (num_taps <= XLA_FORWARD_MAX_TAPS and math.prod(out_hw) >= XLA_FORWARD_MIN_POSITIONS
            and (rects := tap_rectangles(offsets)) is not None):
        return _rectangle_conv(x_BHWI, w_TIO, rects, out_hw)
    chunk = _chunk_size(x_BHWI.shape[0], out_hw, num_taps * features_in, x_BHWI.dtype.itemsize)
    w_KO = w_TIO.reshape(num_taps * features_in, features_out)
    x_BHWI, offsets = pad_to_cover(x_BHWI, offsets, out_hw)
    return _map_chunks(lambda x: gather_patches(x, offsets, out_hw) @ w_KO, chunk, x_BHWI)


def tap_rectangles(offsets):
    """The taps as dense rectangles `(dr0, dc0, rows, cols, step, tap indices)`, or None.

    Rows of taps with the same columns merge; `step` (the dilation) is the gcd of the
    offsets' differences. None when a row's columns are not evenly spaced.
    """
    drs = sorted({dr for dr, _ in offsets})
    dcs = sorted({dc for _, dc in offsets})
    step = math.gcd(*(b - a for a, b in itertools.chain(itertools.pairwise(drs),
                                                         itertools.pairwise(dcs)))) or 1
    row_cols = {dr: sorted(dc for r, dc in offsets if r == dr) for dr in drs}
    rects = []  # [dr0, dc0, rows, cols]
    for dr, cols in row_cols.items():
        if cols != list(range(cols[0], cols[-1] + 1, step)):
            return None
        last = rects[-1] if rects else None
        if last and last[1] == cols[0] and last[3] == len(cols) and last[0] + last[2] * step == dr:
            last[2] += 1
        else:
            rects.append([dr, cols[0], 1, len(cols)])
    index = {offset: t for t, offset in enumerate(offsets)}
    return tuple(
        (dr0, dc0, rows, cols, step,
         tuple(index[dr0 + a * step, dc0 + b * step] for a in range(rows) for b in range(cols)))
        for dr0, dc0, rows, cols in rects
    )


def _rectangle_conv(x_BHWI, w_TIO, rects, out_hw):
    """A sum of XLA convolutions, one per dense rectangle of taps (`tap_rectangles`)."""
    (height, width), (out_h, out_w) = x_BHWI.shape[1:3], out_hw
    y = 0
    for dr0, dc0, rows, cols, step, taps in rects:
        kernel = w_TIO[np.array(taps)].reshape(rows, cols, *w_TIO.shape[1:])
        padding = ((-dr0, out_h - height + dr0 + (rows - 1) * step),
                   (-dc0, out_w - width + dc0 + (cols - 1) * step))
        y = y + jax.lax.conv_general_dilated(x_BHWI, kernel, (1, 1), padding,
                                             rhs_dilation=(step, step), dimension_numbers=_NHWC)
    return y


def _output_side_conv(x_BHWI, w_TIO, offsets, out_hw):
    num_taps, features_in, features_out = w_TIO.shape
    w_IK = w_TIO.transpose(1, 0, 2).reshape(features_in, num_taps * features_out)

    def tap_sum(x):
        z, shifted = pad_to_cover(x @ w_IK, offsets, out_hw)
        (out_h, out_w), o = out_hw, features_out
        return sum(z[:, dr:dr + out_h, dc:dc + out_w, t * o:(t + 1) * o]
                   for t, (dr, dc) in enumerate(shifted))

    height, width = x_BHWI.shape[1:3]
    chunk = _chunk_size(x_BHWI.shape[0], (height, width), num_taps * features_out,
                        x_BHWI.dtype.itemsize)
    return _map_chunks(tap_sum, chunk, x_BHWI)


def _tap_conv_fwd(x_BHWI, w_TIO, offsets, out_hw):
    y = tap_conv(x_BHWI.value, w_TIO.value, offsets, out_hw)
    return y, (x_BHWI.value, w_TIO.value, x_BHWI.perturbed)


def _tap_conv_bwd(offsets, out_hw, residuals, dy_BHWO):
    """Both gradients from one gather of dy, or dW from the patches of x.

    With `g[m, t] = dy[m - off_t]` over x's positions (dy gathered at the mirrored
    offsets, T * O features), `dx = g @ [w_1^T .. w_T^T]` and `dW = x^T @ g`: one
    gather serves both. When x needs no gradient (a network's data input) and has
    fewer features than dy, dW comes from the patches of x instead (T * I features).
    """
    x_BHWI, w_TIO, needs_dx = residuals
    num_taps, features_in, features_out = w_TIO.shape
    if not needs_dx and features_in < features_out:
        return None, _weight_grad_from_patches(x_BHWI, dy_BHWO, w_TIO, offsets, out_hw)
    batch, height, width, _ = x_BHWI.shape
    mirrored = tuple((-dr, -dc) for dr, dc in offsets)
    dy_padded, mirrored = pad_to_cover(dy_BHWO, mirrored, (height, width))
    w_KI = w_TIO.transpose(0, 2, 1).reshape(num_taps * features_out, features_in)
    chunk = _chunk_size(batch, (height, width), num_taps * features_out, dy_BHWO.dtype.itemsize)

    def step(dw_IK, xs):
        x, dy = xs
        g = gather_patches(dy, mirrored, (height, width))
        dx = g @ w_KI if needs_dx else None
        g_NK = g.reshape(-1, num_taps * features_out)
        x_IN = jax.lax.optimization_barrier(x.reshape(-1, features_in).T)  # module doc
        return dw_IK + jnp.matmul(x_IN, g_NK, preferred_element_type=jnp.float32), dx

    dw_IK = jnp.zeros((features_in, num_taps * features_out), jnp.float32)
    dw_IK, dx = jax.lax.scan(step, dw_IK, (_split_chunks(x_BHWI, chunk),
                                           _split_chunks(dy_padded, chunk)))
    dw_TIO = dw_IK.reshape(features_in, num_taps, features_out).transpose(1, 0, 2)
    if needs_dx:
        dx = dx.reshape(-1, *dx.shape[2:])[:batch].astype(x_BHWI.dtype)
    return dx, dw_TIO.astype(w_TIO.dtype)


def _weight_grad_from_patches(x_BHWI, dy_BHWO, w_TIO, offsets, out_hw):
    """`dW = patches(x)^T @ dy`, accumulated over batch chunks."""
    num_taps, features_in, features_out = w_TIO.shape
    chunk = _chunk_size(x_BHWI.shape[0], out_hw, num_taps * features_in, x_BHWI.dtype.itemsize)
    x_padded, offsets = pad_to_cover(x_BHWI, offsets, out_hw)

    def accumulate(dw_OK, xs):
        x, dy = xs
        patches = gather_patches(x, offsets, out_hw).reshape(-1, num_taps * features_in)
        # dW^T = dy^T @ patches as a row-major matmul (module doc).
        dy_ON = jax.lax.optimization_barrier(dy.reshape(-1, features_out).T)
        dw = jnp.matmul(dy_ON, patches, preferred_element_type=jnp.float32)
        return dw_OK + dw, None

    dw_OK = jnp.zeros((features_out, num_taps * features_in), jnp.float32)
    chunks = (_split_chunks(x_padded, chunk), _split_chunks(dy_BHWO, chunk))
    dw_OK, _ = jax.lax.scan(accumulate, dw_OK, chunks)
    return dw_OK.T.reshape(w_TIO.shape).astype(w_TIO.dtype)


tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd, symbolic_zeros=True)


def live_taps(mask_HWIO: np.ndarray | None, kernel_hw) -> list[tuple[int, int]]:
    """Kernel taps `(r, c)` with at least one unmasked weight."""
    kh, kw = kernel_hw
    return [
        (r, c)
        for r in range(kh)
        for c in range(kw)
        if mask_HWIO is None or mask_HWIO[r, c].any()
    ]


def conv(x_BHWI, kernel_HWIO, mask_HWIO=None, dilation: int = 1, impl: str = "plain",
         padding=((0, 0), (0, 0))):
    """Stride-1 convolution with `kernel * mask`; "im2col" and "split" never compute the
    masked taps ("split": XLA's convolution over the dense rectangles of live taps,
    forward and gradients).

    `padding = ((top, bottom), (left, right))` zeros around x (the default: VALID).
    """
    kh, kw = kernel_HWIO.shape[:2]
    if impl == "plain":
        kernel = kernel_HWIO if mask_HWIO is None else kernel_HWIO * mask_HWIO
        return jax.lax.conv_general_dilated(
            x_BHWI,
            kernel,
            (1, 1),
            padding,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=_NHWC,
        )
    taps = live_taps(mask_HWIO, (kh, kw))
    (top, bottom), (left, right) = padding
    out_hw = (
        x_BHWI.shape[1] + top + bottom - dilation * (kh - 1),
        x_BHWI.shape[2] + left + right - dilation * (kw - 1),
    )
    if not taps:  # e.g. a 1x1 type-A mask with one group: the output is zero
        return jnp.zeros((x_BHWI.shape[0], *out_hw, kernel_HWIO.shape[-1]), x_BHWI.dtype)
    flat_taps = np.array([r * kw + c for r, c in taps])
    w_TIO = kernel_HWIO.reshape(kh * kw, *kernel_HWIO.shape[2:])[flat_taps]
    if mask_HWIO is not None:
        tap_mask = mask_HWIO.reshape(kh * kw, *mask_HWIO.shape[2:])[flat_taps]
        if not tap_mask.all():  # e.g. the centre tap under channel groups
            w_TIO = w_TIO * tap_mask
    if impl != "split" and (kh, kw) == (1, 1) and top == bottom == left == right == 0:
        return x_BHWI @ w_TIO[0]  # pointwise: a plain matmul, no patches to bound
    # Offsets into the unpadded x (zero outside it), so dx covers x only.
    offsets = tuple((dilation * r - top, dilation * c - left) for r, c in taps)
    if impl != "split":
        return tap_conv(x_BHWI, w_TIO, offsets, out_hw)
    if (rects := tap_rectangles(offsets)) is None:
        raise ValueError("conv_impl='split' needs live taps that form dense rectangles "
                         f"(rows of evenly spaced taps), got taps {taps}")
    return _rectangle_conv(x_BHWI, w_TIO, rects, out_hw)


def conv_general_dilated_fn(impl: str):
    """A `conv_general_dilated` for `flax.linen.Conv` (None: lax's own, i.e. "plain").

    Unmasked convolutions get the same choice: XLA:CPU is as slow at their gradients
    (even a 1x1 convolution's forward + backward runs far slower than the same matmul).
    """
    if impl == "plain":
        return None
    return functools.partial(_conv_general_dilated, impl)


def _conv_general_dilated(
    impl,
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
):
    """`lax.conv_general_dilated`, in im2col for what jaxar's stacks use where `impl` says so."""
    if resolve_impl(impl) == "plain":
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
        )
    del precision
    dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if isinstance(padding, str):  # "SAME" pads nothing for a 1x1 kernel
        pointwise = tuple(rhs.shape[:2]) == (1, 1)
        padding = ((0, 0), (0, 0)) if padding == "VALID" or pointwise else padding
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    supported = (
        tuple(window_strides) == (1, 1)
        and not isinstance(padding, str)
        and tuple(lhs_dilation or (1, 1)) == (1, 1)
        and rhs_dilation[0] == rhs_dilation[1]
        and feature_group_count == 1
        and dims == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if not supported:
        raise NotImplementedError(
            "im2col convolution supports stride 1, explicit or VALID padding (SAME for 1x1), "
            "NHWC/HWIO and one group"
        )
    padding = tuple(tuple(p) for p in padding)
    return conv(lhs, rhs, None, rhs_dilation[0], "im2col", padding)

"""A two-level VQ-VAE (van den Oord et al., 2017; Razavi et al., 2019, "VQ-VAE-2").

The image (scaled to [-1, 1]) is encoded to a bottom feature map at 1/bottom_factor
of its side and, from that, a top map at 1/top_factor. The top map is quantized
first; the bottom quantizer sees the bottom features together with the top codes
decoded to the bottom resolution, so the bottom codes hold what the top ones miss.
The decoder reconstructs the image from both quantized maps (linear output on the
[-1, 1] scale). The objective per example is the reconstruction's mean squared
error plus `commitment_cost` times both levels' commitment losses.

The codebooks are not parameters: they are exponential moving averages of the
encoder outputs assigned to each code (the "batch_stats" collection, updated in
training steps), with Laplace-smoothed counts, and a code whose average count
falls below `restart_threshold` is restarted at a random encoder output.

This is an autoencoder, not a distribution over its input (`autoregressive =
False`): it has no sampler; its codes are the data of an autoregressive prior.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from jaxar.models import base, configs
from jaxar.nn import layers


class Quantized(NamedTuple):
    """What `VectorQuantizer` returns for z `[B, h, w, D]`."""

    quantized: jax.Array  # [B, h, w, D]: the codes' vectors, gradients straight through to z
    codes: jax.Array  # int32 [B, h, w]
    commitment: jax.Array  # [B]: mean over (h, w, D) of (z - stop_gradient(q))^2
    histogram: jax.Array  # [B, K]: fraction of the example's positions given each code


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with an EMA codebook (Sonnet's `VectorQuantizerEMA`).

    State ("batch_stats"): `ema_count [K]`, `ema_sum [K, D]` and `codebook [K, D]`
    (= ema_sum / the Laplace-smoothed count). All math is float32, whatever z's dtype.
    """

    num_codes: int
    code_features: int
    decay: float = 0.99
    restart_threshold: float = 1.0
    epsilon: float = 1e-5

    def setup(self):
        shape_KD = (self.num_codes, self.code_features)
        self.ema_count = self.variable(
            "batch_stats", "ema_count", lambda: jnp.ones((self.num_codes,), jnp.float32))
        self.ema_sum = self.variable(
            "batch_stats", "ema_sum",
            lambda: jax.random.normal(self.make_rng("params"), shape_KD, jnp.float32))
        self.codebook = self.variable("batch_stats", "codebook", lambda: self.ema_sum.value)

    def embed(self, codes):
        """The codebook vectors of int codes `[...]`: float32 `[..., D]`."""
        return jnp.take(self.codebook.value, codes, axis=0)

    def __call__(self, z_BhwD, train: bool, rng=None) -> Quantized:
        """Quantizes z; in training (not at init) also updates the codebook, restarting
        dead codes at rows of z drawn with `rng`."""
        z_BhwD = z_BhwD.astype(jnp.float32)
        z_ND = z_BhwD.reshape(-1, self.code_features)
        codebook_KD = self.codebook.value
        distances_NK = (jnp.sum(z_ND**2, -1, keepdims=True) - 2 * z_ND @ codebook_KD.T
                        + jnp.sum(codebook_KD**2, -1))
        codes_N = jnp.argmin(distances_NK, -1).astype(jnp.int32)
        one_hot_NK = jax.nn.one_hot(codes_N, self.num_codes, dtype=jnp.float32)
        if train and not self.is_initializing():
            self._update(jax.lax.stop_gradient(z_ND), one_hot_NK, rng)
        q_BhwD = jnp.take(codebook_KD, codes_N, axis=0).reshape(z_BhwD.shape)
        batch = z_BhwD.shape[0]
        return Quantized(
            quantized=z_BhwD + jax.lax.stop_gradient(q_BhwD - z_BhwD),
            codes=codes_N.reshape(z_BhwD.shape[:-1]),
            commitment=jnp.mean((z_BhwD - jax.lax.stop_gradient(q_BhwD)) ** 2, axis=(1, 2, 3)),
            histogram=one_hot_NK.reshape(batch, -1, self.num_codes).mean(1),
        )

    def _update(self, z_ND, one_hot_NK, rng):
        """One EMA step of counts and sums, the smoothed codebook, then dead-code restarts."""
        d, eps, k = self.decay, self.epsilon, self.num_codes
        count_K = d * self.ema_count.value + (1 - d) * one_hot_NK.sum(0)
        sum_KD = d * self.ema_sum.value + (1 - d) * one_hot_NK.T @ z_ND
        total = count_K.sum()
        smoothed_K = (count_K + eps) / (total + k * eps) * total
        codebook_KD = sum_KD / smoothed_K[:, None]
        if self.restart_threshold > 0:
            if rng is None:
                raise ValueError("rng: VectorQuantizer needs a key in training to restart "
                                 "dead codes (or restart_threshold=0)")
            rows_KD = z_ND[jax.random.randint(rng, (k,), 0, z_ND.shape[0])]
            dead_K = count_K < self.restart_threshold
            count_K = jnp.where(dead_K, 1.0, count_K)
            sum_KD = jnp.where(dead_K[:, None], rows_KD, sum_KD)
            codebook_KD = jnp.where(dead_K[:, None], rows_KD, codebook_KD)
        self.ema_count.value, self.ema_sum.value, self.codebook.value = (
            count_K, sum_KD, codebook_KD)


class ResidualStack(nn.Module):
    """`num_layers` x (x + 1x1(ReLU(3x3(ReLU(x))))), then ReLU."""

    features: int
    residual_features: int
    num_layers: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            h = nn.Conv(self.residual_features, (3, 3), name=f"conv3x3_{i}")(nn.relu(x))
            x = x + nn.Conv(self.features, (1, 1), name=f"conv1x1_{i}")(nn.relu(h))
        return nn.relu(x)


class ConvEncoder(nn.Module):
    """`num_downsamples` 4x4 stride-2 convolutions (ReLU), a 3x3 one, a residual stack."""

    features: int
    residual_features: int
    num_residual_layers: int
    num_downsamples: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_downsamples):
            x = nn.relu(nn.Conv(self.features, (4, 4), (2, 2), ((1, 1), (1, 1)),
                                name=f"down_{i}")(x))
        x = nn.Conv(self.features, (3, 3), name="conv")(x)
        return ResidualStack(self.features, self.residual_features, self.num_residual_layers,
                             name="residual")(x)


class Upsample(nn.Module):
    """`num_layers` 4x4 stride-2 transposed convolutions, ReLU between them."""

    features: int
    out_features: int
    num_layers: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.ConvTranspose(self.out_features if last else self.features, (4, 4), (2, 2),
                                 "SAME", name=f"up_{i}")(x)
            x = x if last else nn.relu(x)
        return x


class ConvDecoder(nn.Module):
    """A 3x3 convolution, a residual stack, then `num_upsamples` transposed convolutions
    up to `out_features` (linear)."""

    features: int
    residual_features: int
    num_residual_layers: int
    num_upsamples: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (3, 3), name="conv")(x)
        x = ResidualStack(self.features, self.residual_features, self.num_residual_layers,
                          name="residual")(x)
        return Upsample(self.features, self.out_features, self.num_upsamples, name="upsample")(x)


class VQVAE(base.Model):
    event_shape: tuple[int, int, int]
    num_levels: int
    features: int = 128
    residual_features: int = 32
    num_residual_layers: int = 2
    code_features: int = 64
    num_codes: int = 512
    bottom_factor: int = 2
    top_factor: int = 4
    decay: float = 0.99
    commitment_cost: float = 0.25
    restart_threshold: float = 1.0
    epsilon: float = 1e-5

    # Not dataclass fields: the strict builder takes `model.num_classes` only at 0.
    autoregressive = False
    loss_metric = "loss"
    num_classes = 0

    def setup(self):
        bottom_steps = int(math.log2(self.bottom_factor))
        top_steps = int(math.log2(self.top_factor // self.bottom_factor))
        stack = dict(features=self.features, residual_features=self.residual_features,
                     num_residual_layers=self.num_residual_layers)
        quantizer = dict(num_codes=self.num_codes, code_features=self.code_features,
                         decay=self.decay, restart_threshold=self.restart_threshold,
                         epsilon=self.epsilon)
        d = self.code_features
        self.bottom_encoder = ConvEncoder(num_downsamples=bottom_steps, **stack)
        self.top_encoder = ConvEncoder(num_downsamples=top_steps, **stack)
        self.top_in = nn.Conv(d, (1, 1))
        self.top_quantizer = VectorQuantizer(**quantizer)
        self.top_decoder = ConvDecoder(num_upsamples=top_steps, out_features=d, **stack)
        self.bottom_in = nn.Conv(d, (1, 1))
        self.bottom_quantizer = VectorQuantizer(**quantizer)
        self.top_upsample = Upsample(d, d, top_steps)
        self.image_decoder = ConvDecoder(num_upsamples=bottom_steps,
                                         out_features=self.event_shape[-1], **stack)

    def _quantize(self, x_BHWC, train: bool, rng) -> tuple[Quantized, Quantized]:
        """Both levels' quantizer outputs (top, bottom) for images x."""
        h_bottom = self.bottom_encoder(layers.scale_to_unit(x_BHWC, self.num_levels))
        rng_top, rng_bottom = (None, None) if rng is None else jax.random.split(rng)
        top = self.top_quantizer(self.top_in(self.top_encoder(h_bottom)), train, rng_top)
        z_bottom = self.bottom_in(jnp.concatenate([h_bottom, self.top_decoder(top.quantized)], -1))
        return top, self.bottom_quantizer(z_bottom, train, rng_bottom)

    def _decode(self, q_top, q_bottom):
        return self.image_decoder(jnp.concatenate([self.top_upsample(q_top), q_bottom], -1))

    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """The reconstruction of x, float `[B, H, W, C]` on [-1, 1]. It never updates the
        codebooks (`loss(..., train=True)` does), so `train` changes nothing."""
        del labels, cond, train
        top, bottom = self._quantize(x, False, None)
        return self._decode(top.quantized, bottom.quantized)

    def loss(self, x, labels=None, cond=None, train: bool = False, rng=None) -> dict:
        """Per-example float32 metrics: "loss" (the objective), "mse" (on [-1, 1]) and
        both levels' code histograms `[B, K]`; `train` updates the codebooks."""
        del labels, cond
        top, bottom = self._quantize(x, train, rng)
        recon = self._decode(top.quantized, bottom.quantized).astype(jnp.float32)
        mse = jnp.mean((recon - layers.scale_to_unit(x, self.num_levels)) ** 2, axis=(1, 2, 3))
        commitment = top.commitment.astype(jnp.float32) + bottom.commitment.astype(jnp.float32)
        return {
            "loss": mse + self.commitment_cost * commitment,
            "mse": mse,
            "code_hist_top": top.histogram.astype(jnp.float32),
            "code_hist_bottom": bottom.histogram.astype(jnp.float32),
        }

    @nn.nowrap
    def training_kwargs(self, rng) -> dict:
        return {"rng": rng}

    @nn.nowrap
    def summarize(self, means: dict) -> dict:
        """loss, mse, PSNR (peak-to-peak 2) and each level's code perplexity and usage."""
        out = {"loss": means["loss"], "mse": means["mse"],
               "psnr": 10 * jnp.log10(4.0 / means["mse"])}
        for level in ("top", "bottom"):
            p_K = means[f"code_hist_{level}"]
            out[f"perplexity_{level}"] = jnp.exp(-jnp.sum(xlogy(p_K, p_K), -1))
            out[f"code_usage_{level}"] = jnp.mean(p_K > 0, -1)
        return out

    def encode(self, x):
        """Codes of images x: int32 (top `[B, H/top_factor, W/top_factor]`, bottom
        `[B, H/bottom_factor, W/bottom_factor]`); the codebooks are not updated."""
        top, bottom = self._quantize(x, False, None)
        return top.codes, bottom.codes

    def decode_codes(self, top, bottom):
        """Images `[B, H, W, C]` on [-1, 1] from top and bottom codes (as `encode` gives)."""
        return self._decode(self.top_quantizer.embed(top), self.bottom_quantizer.embed(bottom))

    @nn.nowrap
    def reconstruct_levels(self, y):
        """A reconstruction on [-1, 1] as the nearest int32 levels in [0, num_levels)."""
        top = self.num_levels - 1
        return jnp.clip(jnp.round((y + 1) / 2 * top), 0, top).astype(jnp.int32)

    @nn.nowrap
    def preview(self, variables, key, num: int, examples: dict, sample):
        """The first `num` examples in one row above their reconstructions."""
        del key, sample
        x = np.asarray(examples["x"])[:num].astype(np.int32)
        recon = _reconstruction(self, variables, x)
        return np.concatenate([x, np.asarray(recon)]), x.shape[0]


@functools.partial(jax.jit, static_argnums=0)
def _reconstruction(model: VQVAE, variables, x):
    """The preview's reconstructions, one compiled program (op by op, every layer's ops
    would compile one each)."""
    return model.reconstruct_levels(model.apply(variables, x))


def check_config(f: dict, given: frozenset) -> None:
    """The VQ-VAE's value checks on the resolved fields (`jaxar.models.configs`)."""
    del given
    height, width = f["event_shape"][:2]
    for key in ("bottom_factor", "top_factor"):
        factor = f[key]
        if factor < 2 or factor & (factor - 1) or height % factor or width % factor:
            raise ValueError(f"model.{key} must be a power of two >= 2 dividing the image "
                             f"size {(height, width)}, got {factor}")
    if f["top_factor"] <= f["bottom_factor"]:
        raise ValueError(f"model.top_factor={f['top_factor']} must exceed "
                         f"model.bottom_factor={f['bottom_factor']}")
    if not 0 <= f["decay"] < 1:
        raise ValueError(f"model.decay must lie in [0, 1), got {f['decay']}")
    for key in ("commitment_cost", "restart_threshold"):
        if not 0 <= f[key] < math.inf:
            raise ValueError(f"model.{key} must be finite and >= 0, got {f[key]}")
    if not 0 < f["epsilon"] < math.inf:
        raise ValueError(f"model.epsilon must be finite and > 0, got {f['epsilon']}")


configs.register(VQVAE, configs.Spec(
    event_ndim=3,
    positive=("features", "residual_features", "code_features", "num_codes"),
    check=check_config,
))

"""Likelihoods as pure functions of (distribution parameters, x).

Models never compute a loss: they output distribution parameters, and one of
the likelihoods below turns them into per-dimension conditional log-probs or
samples. Each likelihood works on *groups* of dimensions that share one
parameter vector:

* `Bernoulli` and `Categorical` have groups of one dimension: parameters are
  `[..., F]` for x of shape `[..., 1]` (one parameter vector per dimension).
* Likelihoods that couple the channels of a pixel (the discretized logistic
  mixture) have one group per pixel: parameters `[..., F]` for x `[..., C]`.

`log_prob(params, x)` returns `log p(x_c | x_<c in the group, params)` with
x's shape, so the sum over a group is the group's joint log-prob.
`sample(key, params, x, channel, temperature)` draws channel `channel` of each
group given the earlier channels already written in `x`; the sampler calls it
once per dimension with the key of that step. `log_pmf(params, x, channel)` is
that channel's conditional for every value, `[..., num_levels]` (what an entropy
coder needs).

`mu_law_encode` / `mu_law_decode` compand audio in [-1, 1] into integer levels
and back (the categorical WaveNet models those levels).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Bernoulli:
    """Binary data; one logit per dimension (`p(x=1) = sigmoid(logit)`)."""

    groups_channels = False

    @property
    def num_levels(self) -> int:
        return 2

    def num_params(self, group_size: int = 1) -> int:
        del group_size
        return 1

    def log_prob(self, logits_NF: jax.Array, x_NG: jax.Array) -> jax.Array:
        """Per-dimension log p(x); `logits_NF` is `[..., 1]`, `x_NG` is `[..., 1]`."""
        logits = logits_NF.astype(jnp.float32)
        sign = 2.0 * x_NG.astype(jnp.float32) - 1.0
        return jax.nn.log_sigmoid(sign * logits)

    def log_pmf(self, logits_NF, x_NG, channel) -> jax.Array:
        """`[log p(x=0), log p(x=1)]` of one dimension per group: `[..., 2]`."""
        del x_NG, channel
        logits = logits_NF.astype(jnp.float32)
        return jnp.concatenate([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], -1)

    def sample(self, key, logits_NF, x_NG, channel, temperature=1.0) -> jax.Array:
        """Draws x of one dimension per group: int32 `[...]`."""
        del x_NG, channel
        logits = logits_NF[..., 0].astype(jnp.float32) / temperature
        return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Categorical:
    """`num_levels`-way softmax over the values of each dimension."""

    num_levels: int = 256
    groups_channels = False

    def num_params(self, group_size: int = 1) -> int:
        del group_size
        return self.num_levels

    def log_prob(self, logits_NV: jax.Array, x_NG: jax.Array) -> jax.Array:
        """Per-dimension log p(x); `logits_NV` is `[..., V]`, `x_NG` is `[..., 1]`."""
        logp_NV = jax.nn.log_softmax(logits_NV.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp_NV, x_NG.astype(jnp.int32), axis=-1)

    def log_pmf(self, logits_NV, x_NG, channel) -> jax.Array:
        """`log p(x = v)` of one dimension per group for every value v: `[..., V]`."""
        del x_NG, channel
        return jax.nn.log_softmax(logits_NV.astype(jnp.float32), axis=-1)

    def sample(self, key, logits_NV, x_NG, channel, temperature=1.0) -> jax.Array:
        """Draws x of one dimension per group: int32 `[...]`."""
        del x_NG, channel
        logits = logits_NV.astype(jnp.float32) / temperature
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _log1mexp(d: jax.Array) -> jax.Array:
    """`log(1 - exp(-d))` for d > 0, accurate for small and large d (Maechler, 2012)."""
    return jnp.where(d < np.log(2.0), jnp.log(-jnp.expm1(-d)), jnp.log1p(-jnp.exp(-d)))


@dataclasses.dataclass(frozen=True)
class DiscretizedLogisticMixture:
    """Discretized logistic mixture over the C channels of a pixel (PixelCNN++).

    One parameter vector per pixel, `[..., F]` with `F = K (1 + 2C + C(C-1)/2)`:
    K mixture logits, then C*K means, C*K log-scales, and C(C-1)/2 * K coupling
    coefficients (through tanh) by which channel c's mean moves linearly with
    every earlier channel's value (for RGB: G on R, B on R and G). Values
    `v in [0, L)` are bins of width `2 / (L - 1)` centred on `2v / (L - 1) - 1`;
    the end bins extend to -inf and +inf, so every bin's mass is a difference
    of logistic CDFs and the masses sum to 1 exactly.

    The component is shared by a pixel's channels, so the per-channel
    conditionals are ratios of mixtures: `p(x_c | x_<c) = sum_k pi_k
    prod_{c'<=c} p(x_c' | k) / sum_k pi_k prod_{c'<c} p(x_c' | k)`.

    Numerics: a bin's log-mass is `log(sigmoid(a) - sigmoid(b))`, computed as
    `log_sigmoid(a) + log_sigmoid(-b) + log(1 - exp(-(a - b)))`, which has no
    cancellation anywhere, so the released code's mid-bin fallback (pdf at
    the bin centre when the CDF difference is below 1e-5) is not needed:
    that fallback is what breaks normalization for sharp components there.
    Log-scales are clipped below at -7 as in the released code, and above at
    +7 (a flat component over [-1, 1]), so that no bin's width in standard
    units underflows to 0 (a -inf log-prob) when a diverging network outputs
    huge scales.
    """

    num_levels: int = 256
    num_mixtures: int = 10
    num_channels: int = 3
    max_log_scale: float = 7.0  # inf: clipped below only, as in the released code
    groups_channels = True
    min_log_scale = -7.0

    def num_params(self, group_size: int | None = None) -> int:
        channels = self.num_channels if group_size is None else group_size
        if channels != self.num_channels:
            raise ValueError(f"this mixture models {self.num_channels} channels, not {channels}")
        return self.num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)

    def _split(self, params_NF, temperature=1.0):
        """(log mixture weights [..., K], means, log-scales [..., C, K], coupling [..., P, K])."""
        k, c = self.num_mixtures, self.num_channels
        params = params_NF.astype(jnp.float32)
        if params.shape[-1] != self.num_params():
            raise ValueError(f"expected {self.num_params()} parameters, got {params.shape[-1]}")
        batch_shape = params.shape[:-1]
        log_pi_NK = jax.nn.log_softmax(params[..., :k] / temperature, axis=-1)
        rest = params[..., k:]
        means_NCK = rest[..., : c * k].reshape(*batch_shape, c, k)
        log_scales_NCK = rest[..., c * k : 2 * c * k].reshape(*batch_shape, c, k)
        log_scales_NCK = jnp.clip(log_scales_NCK, self.min_log_scale, self.max_log_scale)
        log_scales_NCK = log_scales_NCK + jnp.log(temperature)
        coeffs_NPK = jnp.tanh(rest[..., 2 * c * k :].reshape(*batch_shape, -1, k))
        return log_pi_NK, means_NCK, log_scales_NCK, coeffs_NPK

    def _coupled_means(self, means_NCK, coeffs_NPK, x_NC):
        """Means given the earlier channels: `mu_c + sum_{c'<c} coeff_(c, c') x_c'`."""
        c = self.num_channels
        pair_CDP = np.zeros((c, c, c * (c - 1) // 2), np.float32)
        for later in range(c):
            for earlier in range(later):
                pair_CDP[later, earlier, later * (later - 1) // 2 + earlier] = 1.0
        x_unit = 2.0 * x_NC.astype(jnp.float32) / (self.num_levels - 1) - 1.0
        return means_NCK + jnp.einsum("...pk,cdp,...d->...ck", coeffs_NPK, pair_CDP, x_unit)

    def _bin_log_probs(self, x_NC, means_NCK, log_scales_NCK):
        """`log p(x_c | component k, x_<c)`, `[..., C, K]`."""
        levels = self.num_levels
        v = x_NC.astype(jnp.float32)[..., None]
        inv_scale = jnp.exp(-log_scales_NCK)
        upper = inv_scale * ((2.0 * v + 1.0) / (levels - 1) - 1.0 - means_NCK)
        lower = inv_scale * ((2.0 * v - 1.0) / (levels - 1) - 1.0 - means_NCK)
        width = inv_scale * (2.0 / (levels - 1))  # upper - lower, without the rounding
        below_upper = jax.nn.log_sigmoid(upper)  # log CDF(upper): the left tail for v = 0
        above_lower = jax.nn.log_sigmoid(-lower)  # log (1 - CDF(lower)): the right tail
        interior = below_upper + above_lower + _log1mexp(width)
        return jnp.where(v == 0, below_upper, jnp.where(v == levels - 1, above_lower, interior))

    def _components(self, params_NF, x_NC, temperature=1.0):
        """(`log p(component k | x_<c)`, `log p(x_c | k, x_<c)`), both `[..., C, K]`.

        The posterior is normalized per channel (log_softmax), so each
        conditional sums to 1 over x_c to float32 rounding, however unlikely
        the earlier channels were (subtracting two joint log-probs near -80
        would lose 1e-5 there).
        """
        log_pi_NK, means, log_scales, coeffs = self._split(params_NF, temperature)
        means = self._coupled_means(means, coeffs, x_NC)
        lp_NCK = self._bin_log_probs(x_NC, means, log_scales)
        # Sum over the earlier channels (an exclusive cumsum: subtracting lp_NCK would round).
        pad = [(0, 0)] * (lp_NCK.ndim - 2) + [(1, 0), (0, 0)]
        seen_NCK = jnp.cumsum(jnp.pad(lp_NCK[..., :-1, :], pad), axis=-2)
        return jax.nn.log_softmax(log_pi_NK[..., None, :] + seen_NCK, axis=-1), lp_NCK

    def log_prob(self, params_NF: jax.Array, x_NC: jax.Array) -> jax.Array:
        """Per-channel conditionals `log p(x_c | x_<c)` of each pixel, x's shape `[..., C]`."""
        log_post_NCK, lp_NCK = self._components(params_NF, x_NC)
        return jax.nn.logsumexp(log_post_NCK + lp_NCK, axis=-1)

    def log_pmf(self, params_NF, x_NC, channel) -> jax.Array:
        """`log p(x_channel = v | x_<channel)` for every value v: `[..., V]`.

        `channel` may be traced; only the channels before it are read from `x_NC`.
        """
        values_V1 = jnp.arange(self.num_levels, dtype=x_NC.dtype)[:, None]
        is_channel = jnp.arange(self.num_channels) == channel
        x_NVC = jnp.where(is_channel, values_V1, x_NC[..., None, :])
        lp_NVC = self.log_prob(params_NF[..., None, :], x_NVC)
        return jnp.sum(jnp.where(is_channel, lp_NVC, 0.0), axis=-1)

    def sample(self, key, params_NF, x_NC, channel, temperature=1.0) -> jax.Array:
        """Draws channel `channel` given the earlier channels in `x_NC`: int32 `[...]`.

        Exact: the component is drawn from its posterior given the earlier
        channels, then a logistic value is binned. Temperature T divides the
        mixture logits and multiplies the logistic scales (T < 1: sharper).
        """
        component_key, noise_key = jax.random.split(key)
        log_post_NCK, _ = self._components(params_NF, x_NC, temperature)
        k_N = jax.random.categorical(component_key, jnp.take(log_post_NCK, channel, -2), axis=-1)
        _, means, log_scales, coeffs = self._split(params_NF, temperature)
        means = self._coupled_means(means, coeffs, x_NC)
        pick = lambda a_NCK: jnp.take_along_axis(
            jnp.take(a_NCK, channel, axis=-2), k_N[..., None], axis=-1
        )[..., 0]
        y_N = pick(means) + jnp.exp(pick(log_scales)) * jax.random.logistic(noise_key, k_N.shape)
        value = jnp.round((y_N + 1.0) * (self.num_levels - 1) / 2.0)
        return jnp.clip(value, 0, self.num_levels - 1).astype(jnp.int32)


def make_likelihood(name: str, num_levels: int, num_mixtures: int = 10, num_channels: int = 1,
                    max_log_scale: float = 7.0):
    """Builds the likelihood called `name` ("bernoulli", "categorical", "dmol").

    `num_mixtures`, `num_channels` (the pixel's channels, one group) and `max_log_scale`
    are read by the discretized logistic mixture only.
    """
    if name == "bernoulli":
        if num_levels != 2:
            raise ValueError(
                f"model.likelihood='bernoulli' needs data.num_levels == 2, got {num_levels}"
            )
        return Bernoulli()
    if name == "categorical":
        return Categorical(num_levels)
    if name == "dmol":
        if num_mixtures < 1:
            raise ValueError(f"model.num_mixtures must be >= 1, got {num_mixtures}")
        return DiscretizedLogisticMixture(num_levels, num_mixtures, num_channels, max_log_scale)
    raise ValueError(
        f"model.likelihood must be one of ['bernoulli', 'categorical', 'dmol'], got {name!r}"
    )


def mu_law_encode(x, num_levels: int = 256):
    """Mu-law companding then uniform quantization: floats in [-1, 1] -> ints in [0, num_levels).

    `y = sign(x) log(1 + mu |x|) / log(1 + mu)` with `mu = num_levels - 1`, then
    `round((y + 1) / 2 * mu)`; values outside [-1, 1] are clipped. Works on numpy
    and jax arrays and returns the same kind (int32).
    """
    xp = jnp if isinstance(x, jax.Array) else np
    mu = num_levels - 1
    x = xp.clip(xp.asarray(x, xp.float32), -1.0, 1.0)
    y = xp.sign(x) * xp.log1p(mu * xp.abs(x)) / float(np.log1p(mu))  # float32 throughout
    return xp.round((y + 1.0) / 2.0 * mu).astype(xp.int32)


def mu_law_decode(q, num_levels: int = 256):
    """Inverse of `mu_law_encode` up to quantization: ints in [0, num_levels) -> [-1, 1]."""
    xp = jnp if isinstance(q, jax.Array) else np
    mu = num_levels - 1
    y = 2.0 * xp.asarray(q, xp.float32) / mu - 1.0
    return xp.sign(y) * xp.expm1(xp.abs(y) * float(np.log1p(mu))) / mu

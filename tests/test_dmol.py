"""The discretized logistic mixture: exact normalization, RGB coupling, exact sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import chi_square_statistic
from scipy.special import expit, logsumexp

from jaxar import distributions
from jaxar.distributions import DiscretizedLogisticMixture

K = 4


def random_params(rng, n, channels, min_log_scale=-9.0):
    """[n, F] parameters: means in [-1.5, 1.5], log-scales in [min_log_scale, 4]."""
    lik = DiscretizedLogisticMixture(256, K, channels)
    params = 3.0 * rng.standard_normal((n, lik.num_params()))
    params[:, K : K + channels * K] = rng.uniform(-1.5, 1.5, (n, channels * K))
    params[:, K + channels * K : K + 2 * channels * K] = rng.uniform(
        min_log_scale, 4, (n, channels * K)
    )
    return params.astype(np.float32)


def log_prob(lik, params, x):
    return np.asarray(jax.jit(lik.log_prob)(jnp.asarray(params), jnp.asarray(x)))


@pytest.mark.parametrize("num_levels", [256, 32, 2])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_conditional_sums_to_one(num_levels, channels):
    """For random earlier channels, sum over all values of x_c of p(x_c | x_<c) = 1."""
    lik = distributions.make_likelihood("dmol", num_levels, K, channels)
    rng = np.random.default_rng(num_levels + channels)
    n = 200
    params = random_params(rng, n, channels)
    for c in range(channels):
        x = np.repeat(rng.integers(0, num_levels, (n, 1, channels)), num_levels, axis=1)
        x[:, :, c] = np.arange(num_levels)
        lp = log_prob(lik, params[:, None], x)[..., c]
        total = np.exp(lp.astype(np.float64)).sum(axis=1)
        np.testing.assert_allclose(total, 1.0, atol=1e-5, err_msg=f"channel {c}")


def reference_log_prob(params, x, num_levels):
    """float64 numpy: log p(r), log p(g | r), log p(b | r, g) written out for 3 channels."""
    logit, mean, log_s, coeff = np.split(params.astype(np.float64), [K, 4 * K, 7 * K], axis=-1)
    mean, log_s, coeff = (a.reshape(*a.shape[:-1], 3, K) for a in (mean, log_s, coeff))
    coeff, log_s = np.tanh(coeff), np.maximum(log_s, -7.0)
    unit = 2.0 * x / (num_levels - 1) - 1.0
    mean = mean.copy()
    mean[..., 1, :] += coeff[..., 0, :] * unit[..., 0, None]
    mean[..., 2, :] += coeff[..., 1, :] * unit[..., 0, None] + coeff[..., 2, :] * unit[..., 1, None]
    half = 1.0 / (num_levels - 1)
    a = (unit[..., None] + half - mean) * np.exp(-log_s)
    b = (unit[..., None] - half - mean) * np.exp(-log_s)
    a = np.where(x[..., None] == num_levels - 1, np.inf, a)
    b = np.where(x[..., None] == 0, -np.inf, b)
    # CDF(a) - CDF(b), from the tail on the bin's side (no cancellation near 1).
    mass = np.where(a + b > 0, expit(-b) - expit(-a), expit(a) - expit(b))
    log_bin = np.log(mass)  # [..., 3, K]
    log_pi = logit - logsumexp(logit, axis=-1, keepdims=True)
    joint = [logsumexp(log_pi + log_bin[..., : c + 1, :].sum(-2), axis=-1) for c in range(3)]
    return np.stack([joint[0], joint[1] - joint[0], joint[2] - joint[1]], axis=-1)


@pytest.mark.parametrize("num_levels", [256, 4])
def test_matches_a_float64_reference(num_levels):
    rng = np.random.default_rng(1)
    params = random_params(rng, 500, 3, min_log_scale=-4.0)  # no bin below float64's range
    x = rng.integers(0, num_levels, (500, 3))
    x[:50] = 0
    x[50:100] = num_levels - 1  # the CDF tails
    lik = DiscretizedLogisticMixture(num_levels, K, 3)
    got = log_prob(lik, params, x)
    np.testing.assert_allclose(got, reference_log_prob(params, x, num_levels), rtol=1e-4,
                               atol=1e-4)


def test_channels_are_coupled_in_order():
    lik = DiscretizedLogisticMixture(256, K, 3)
    params = random_params(np.random.default_rng(2), 1, 3, min_log_scale=-2.0)
    base, red, blue = log_prob(lik, params, np.array([[100, 120, 140], [30, 120, 140],
                                                      [100, 120, 20]]))[:, None]
    assert red[0, 0] != base[0, 0] and not np.allclose(red[0, 1:], base[0, 1:])
    np.testing.assert_array_equal(blue[0, :2], base[0, :2])  # B changes no earlier term


def test_sampling_channel_by_channel_is_exact():
    """Joint frequencies of (R, G, B), each drawn given the earlier ones, match exp(log_prob)."""
    levels = 4
    lik = DiscretizedLogisticMixture(levels, K, 3)
    params = random_params(np.random.default_rng(3), 1, 3, min_log_scale=-2.0)
    n = 20000

    @jax.jit
    def draw(key):
        params_N = jnp.broadcast_to(jnp.asarray(params), (n, params.shape[-1]))
        x = jnp.zeros((n, 3), jnp.int32)
        for c in range(3):
            x = x.at[:, c].set(lik.sample(jax.random.fold_in(key, c), params_N, x, c))
        return x

    x = draw(jax.random.key(0))
    grid = np.stack(np.meshgrid(*[np.arange(levels)] * 3, indexing="ij"), -1).reshape(-1, 3)
    probs = np.exp(log_prob(lik, params, grid).astype(np.float64).sum(-1))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    index = np.asarray(x) @ np.array([levels**2, levels, 1])
    stat, dof = chi_square_statistic(index, probs)
    assert stat < dof + 3.1 * np.sqrt(2 * dof) + 10, (stat, dof)


def test_temperature_divides_logits_and_multiplies_scales():
    lik = DiscretizedLogisticMixture(256, K, 3)
    params = random_params(np.random.default_rng(4), 64, 3, min_log_scale=-5.0)
    params[:, 7 * K : 10 * K] = 0.0
    t = 0.5
    tempered = params.copy()
    tempered[:, :K] /= t
    tempered[:, 4 * K : 7 * K] += np.log(t)
    x = jnp.asarray(np.random.default_rng(5).integers(0, 256, (64, 3)), jnp.int32)
    sample = jax.jit(lik.sample, static_argnums=3)
    for c in range(3):
        hot = sample(jax.random.key(c), jnp.asarray(params), x, c, jnp.float32(t))
        cold = sample(jax.random.key(c), jnp.asarray(tempered), x, c, jnp.float32(1.0))
        np.testing.assert_array_equal(hot, cold)


def test_make_likelihood_checks_its_arguments():
    assert distributions.make_likelihood("dmol", 256, 10, 3).num_params() == 100
    assert distributions.make_likelihood("dmol", 32, 5, 1).num_params() == 15
    with pytest.raises(ValueError, match="num_mixtures"):
        distributions.make_likelihood("dmol", 256, 0, 3)
    with pytest.raises(ValueError, match="'dmol'"):
        distributions.make_likelihood("logistic", 256)

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
once per dimension with the key of that step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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

    def sample(self, key, logits_NV, x_NG, channel, temperature=1.0) -> jax.Array:
        """Draws x of one dimension per group: int32 `[...]`."""
        del x_NG, channel
        logits = logits_NV.astype(jnp.float32) / temperature
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def make_likelihood(name: str, num_levels: int):
    """Builds the likelihood called `name` ("bernoulli", "categorical", ...)."""
    if name == "bernoulli":
        if num_levels != 2:
            raise ValueError(
                f"model.likelihood='bernoulli' needs data.num_levels == 2, got {num_levels}"
            )
        return Bernoulli()
    if name == "categorical":
        return Categorical(num_levels)
    raise ValueError(
        f"model.likelihood must be one of ['bernoulli', 'categorical'], got {name!r}"
    )

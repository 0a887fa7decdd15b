"""Jitted ancestral samplers: unconditional, class-conditional and completion.

`sample` checks its inputs and runs `loop.ancestral`, the one sampling loop,
with the decoder of the chosen method: the naive one (the whole network at
every step) or the model's cached decoder (`model.decoder`); or
`fixed_point.fixed_point`, which solves for the same sample by parallel
passes. Every method draws dimension `order[t]` with the key `fold_in(key, t)`
from the same parameters, so the same key gives the same samples whatever the
method.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.models import base, common
from jaxar.sampling import fixed_point, loop

METHODS = ("auto", "naive", "cached", "fixed_point")
_LOG = logging.getLogger(__name__)


def sample(
    model,
    variables,
    key,
    num_samples: int = 16,
    labels=None,
    temperature: float = 1.0,
    known=None,
    known_mask=None,
    cond=None,
    method: str = "auto",
):
    """Draws `num_samples` samples `[num_samples, *model.event_shape]` (int32).

    labels: `[num_samples]` class labels for class-conditional models.
    known, known_mask: completion; dimensions where `known_mask` is True keep
      the value of `known` and the rest are sampled given them (only what comes
      earlier in the ordering is seen by each conditional).
    cond: `[num_samples, *model.cond_shape]` spatial conditioning map, if any.
    variables: this model's (`common.check_variables`), else a ValueError naming them.
    method: "naive" reruns the whole network at every step; "cached" runs
      only what each new dimension needs (the model's decoder); "fixed_point"
      redraws every dimension in parallel passes until nothing changes (the
      number of passes is logged at INFO); "auto" is "cached". Same key ->
      same samples, whatever the method.
    """
    if not model.autoregressive:
        raise ValueError(f"model: {type(model).__name__} is not an autoregressive model and "
                         "has no sampler (sample a prior over its codes instead)")
    num_samples = common.check_count("num_samples", num_samples)
    common.check_temperature(temperature)
    for name, value in (("known", known), ("known_mask", known_mask)):
        if value is not None:
            common.check_array(name, value)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    common.check_labels(model, labels, num_samples)
    common.check_cond(model, cond, num_samples)
    known, known_mask = _check_completion(model, num_samples, known, known_mask)
    # Last: the cheap checks of the arguments come before tracing the model's init.
    common.check_variables(model, variables)
    temperature = jnp.float32(temperature)
    if method == "auto":
        method = "cached" if has_decoder(model) else "naive"
    if method == "cached" and not has_decoder(model):
        raise ValueError(f"method='cached': {type(model).__name__} has no cached decoder")
    with common.rng_context():
        if method == "fixed_point":
            x, passes = jitted_fixed_point(model, variables, key, labels, cond, temperature,
                                           known, known_mask)
            _LOG.info("fixed_point: %d network passes for %d dimensions", int(passes),
                      known[0].size)
            return x
        return jitted_sample(model, method, variables, key, labels, cond, temperature, known,
                             known_mask)


def has_decoder(model) -> bool:
    """Whether the model overrides `base.Model.decoder` (every registered model does)."""
    return type(model).decoder is not base.Model.decoder


# What `sample` runs after its checks, without them: `(x, passes)` for "fixed_point", and
# the ancestral loop for "naive" / "cached"; and one Jacobi pass, `redraw`, which checks that
# a sample is the full network's ancestral sample. Benchmarks lower and compile them directly.
jitted_fixed_point = jax.jit(fixed_point.fixed_point, static_argnums=0)
jitted_redraw = jax.jit(fixed_point.redraw, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def jitted_sample(model, method, variables, key, labels, cond, temperature, known, known_mask):
    """`method` ("naive" or "cached") run by the one ancestral loop; inputs unchecked."""
    batch = known.shape[0]
    if method == "naive":
        decoder = loop.naive_decoder(model, variables, labels, cond, batch)
    else:
        decoder = model.decoder(variables, labels, cond, batch)
    return loop.ancestral(model, decoder, key, temperature, known, known_mask)


def _check_completion(model, num_samples, known, known_mask):
    shape = (num_samples, *model.event_shape)
    if (known is None) != (known_mask is None):
        raise ValueError("known and known_mask must be given together")
    if known is None:
        return jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)
    common.check_x(model, known, "known")
    if tuple(known.shape) != shape:
        raise ValueError(f"known must have shape {list(shape)}, got {list(known.shape)}")
    if tuple(np.shape(known_mask)) != shape:
        raise ValueError(
            f"known_mask must have shape {list(shape)}, got {list(np.shape(known_mask))}"
        )
    if np.dtype(known_mask.dtype) != np.bool_:
        raise ValueError(f"known_mask must be a boolean array, got dtype {known_mask.dtype}")
    return jnp.asarray(known, jnp.int32), jnp.asarray(known_mask)

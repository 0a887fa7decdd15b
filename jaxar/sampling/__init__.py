"""Jitted ancestral samplers: unconditional, class-conditional and completion.

`sample` checks its inputs and runs `loop.ancestral`, the one sampling loop,
with the decoder of the chosen method: the naive one (the whole network at
every step) or the model's cached decoder (`model.decoder`). Every method draws
dimension `order[t]` with the key `fold_in(key, t)` from the same parameters,
so the same key gives the same samples whatever the method.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.models import base, common
from jaxar.sampling import loop

METHODS = ("auto", "naive", "cached")


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
    method: "naive" reruns the whole network at every step; "cached" runs
      only what each new dimension needs (the model's decoder); "auto" is
      "cached". Same key -> same samples.
    """
    if not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    common.check_labels(model, labels, num_samples)
    common.check_cond(model, cond, num_samples)
    known, known_mask = _check_completion(model, num_samples, known, known_mask)
    temperature = jnp.float32(temperature)
    if method == "auto":
        method = "cached" if has_decoder(model) else "naive"
    if method == "cached" and not has_decoder(model):
        raise ValueError(f"method='cached': {type(model).__name__} has no cached decoder")
    with common.rng_context():
        return _sample(model, method, variables, key, labels, cond, temperature, known,
                       known_mask)


def has_decoder(model) -> bool:
    """Whether the model overrides `base.Model.decoder` (every registered model does)."""
    return type(model).decoder is not base.Model.decoder


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sample(model, method, variables, key, labels, cond, temperature, known, known_mask):
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

"""Jitted ancestral samplers: unconditional, class-conditional and completion.

Every sampler walks the dimensions in `ordering(model)`; at step t it draws
dimension `d_t` with the key `fold_in(key, t)` from the likelihood's
parameters at `d_t`, so any two samplers that compute the same parameters draw
the same samples. Known dimensions (completion) are copied, never drawn.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.models import common

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
      only what each new dimension needs (models that have such a sampler);
      "auto" picks "cached" where available. Same key -> same samples.
    """
    if not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    # A model may have a cache for some settings only (PixelSNAIL: raster ordering only).
    cached_sampler = getattr(model, "cached_sampler", None)
    has_cache = cached_sampler is not None
    why = ""
    if hasattr(type(model), "cached_sampler") and not has_cache:
        why = f" with model.ordering={getattr(model, 'ordering_name', None)!r}"
    if method == "cached" and not has_cache:
        raise ValueError(
            f"method='cached' is not available for {type(model).__name__}{why}; "
            "use method='naive'"
        )
    common.check_labels(model, labels, num_samples)
    common.check_cond(model, cond, num_samples)
    known, known_mask = _check_completion(model, num_samples, known, known_mask)
    temperature = jnp.float32(temperature)
    with common.rng_context():
        if method == "naive" or not has_cache:
            return _naive(model, variables, key, labels, cond, temperature, known, known_mask)
        return cached_sampler(variables, key, labels, cond, temperature, known, known_mask)


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


def generation_order(model) -> np.ndarray:
    """Flat index of the dimension generated at each step."""
    return np.argsort(np.asarray(model.ordering()).ravel(), kind="stable").astype(np.int32)


def draw(model, key, t, params_BF, x_flat_BD, dim, temperature):
    """Draws dimension `dim` (flat index) from its likelihood parameters `[B, F]`."""
    lik = model.likelihood
    group = model.event_shape[-1] if lik.groups_channels else 1
    start = (dim // group) * group
    x_group_BG = jax.lax.dynamic_slice_in_dim(x_flat_BD, start, group, axis=1)
    return lik.sample(jax.random.fold_in(key, t), params_BF, x_group_BG, dim % group, temperature)


def write(x_flat_BD, dim, value_B, known_flat_BD, mask_flat_BD):
    """Writes the drawn values of `dim`, keeping known dimensions."""
    value_B = jnp.where(mask_flat_BD[:, dim], known_flat_BD[:, dim], value_B)
    return x_flat_BD.at[:, dim].set(value_B)


@functools.partial(jax.jit, static_argnums=0)
def _naive(model, variables, key, labels, cond, temperature, known, known_mask):
    batch = known.shape[0]
    order = jnp.asarray(generation_order(model))
    known_flat, mask_flat = known.reshape(batch, -1), known_mask.reshape(batch, -1)
    x0 = jnp.where(mask_flat, known_flat, 0)

    def step(t, x_flat):
        dim = order[t]

        def draw_dim(x_flat):
            x = x_flat.reshape(known.shape)
            params = model.apply(variables, x, labels, cond)
            params_BF = _params_at(model, params, dim)
            value = draw(model, key, t, params_BF, x_flat, dim, temperature)
            return write(x_flat, dim, value, known_flat, mask_flat)

        # Completion: dimensions known in every sample need no network pass.
        return jax.lax.cond(jnp.all(mask_flat[:, dim]), lambda x: x, draw_dim, x_flat)

    x_flat = jax.lax.fori_loop(0, order.shape[0], step, x0)
    return x_flat.reshape(known.shape)


def _params_at(model, params, dim):
    """Parameters `[B, F]` of the group holding flat dimension `dim`."""
    batch, num_params = params.shape[0], params.shape[-1]
    group = model.event_shape[-1] if model.likelihood.groups_channels else 1
    return params.reshape(batch, -1, num_params)[:, dim // group]

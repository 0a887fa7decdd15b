"""Model registry and the likelihood side of the public API."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from jaxar.models import (
    common,
    gated_pixelcnn,
    made,
    pixelcnn,
    pixelcnn_pp,
    pixelsnail,
    transformer,
    wavenet,
)

# name -> from_config(model_cfg, shape, num_levels)
REGISTRY = {
    "made": made.from_config,
    "pixelcnn": pixelcnn.from_config,
    "gated_pixelcnn": gated_pixelcnn.from_config,
    "pixelcnn_pp": pixelcnn_pp.from_config,
    "pixelsnail": pixelsnail.from_config,
    "wavenet": wavenet.from_config,
    "transformer": transformer.from_config,
}


def build_model(cfg):
    """Builds the flax module named by `cfg.model.name` from `cfg.model` and `cfg.data`."""
    name = cfg.model.name
    if name not in REGISTRY:
        raise ValueError(f"model.name must be one of {sorted(REGISTRY)}, got {name!r}")
    num_levels = int(cfg.data.num_levels)
    if num_levels < 2:
        raise ValueError(f"data.num_levels must be >= 2, got {num_levels}")
    model = REGISTRY[name](cfg.model, tuple(cfg.data.shape), num_levels)
    if model.likelihood.num_levels != num_levels:  # builds, so checks, the likelihood
        raise ValueError(f"model.likelihood does not model data.num_levels={num_levels}")
    return model


def default_cond(model, x):
    """The conditioning input a model trains on, derived from x (`Model.derive_cond`)."""
    return model.derive_cond(x)


def init_variables(model, cfg, key, x=None, labels=None, cond=None):
    """Initializes the model's variables, on batch `x` (random if None)."""
    init_batch = int(cfg.get("train", {}).get("init_batch_size", 16))
    x_key, label_key, param_key = jax.random.split(key, 3)
    if x is None:
        x = jax.random.randint(x_key, (init_batch, *model.event_shape), 0, model.num_levels)
    if labels is None and model.num_classes:
        labels = jax.random.randint(label_key, (x.shape[0],), 0, model.num_classes)
    if cond is None:
        cond = default_cond(model, x)
    common.check_inputs(model, x, labels, cond)
    with common.rng_context():
        return _init(model, param_key, x, labels, cond)


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key, x, labels, cond):
    return model.init({"params": key, "dropout": key}, x, labels, cond)


def log_prob(model, variables, x, labels=None, cond=None):
    """Per-dimension conditional log-probs in nats, float32 of x's shape.

    `lp[i] = log p(x_i | x_<i, labels)` where `<` follows `ordering(model)`.
    """
    common.check_inputs(model, x, labels, cond)
    return _log_prob(model, variables, x, labels, cond)


@functools.partial(jax.jit, static_argnums=0)
def _log_prob(model, variables, x, labels, cond):
    return apply_log_prob(model, variables, x, labels, cond)


def apply_log_prob(model, variables, x, labels=None, cond=None, **apply_kwargs):
    """Traceable log_prob (no input checks): `model.apply` then the likelihood."""
    params = model.apply(variables, x, labels, cond, **apply_kwargs)
    return grouped_log_prob(model, params, x)


def grouped_log_prob(model, params, x):
    """Turns model outputs into per-dimension log-probs of x's shape."""
    lik = model.likelihood
    x_groups = x if lik.groups_channels else x[..., None]
    return lik.log_prob(params, x_groups).reshape(x.shape)


def bits_per_dim(model, variables, x, labels=None, cond=None):
    """Negative log-likelihood of each example in bits per dimension, shape [batch]."""
    lp = log_prob(model, variables, x, labels, cond)
    return nats_to_bits_per_dim(-lp.reshape(lp.shape[0], -1).sum(-1), model.event_shape)


def nats_to_bits_per_dim(nll_nats, event_shape):
    """The one conversion from nats per example to bits per dimension."""
    return nll_nats / (math.prod(event_shape) * math.log(2.0))


def ordering(model) -> np.ndarray:
    """The step at which each dimension is generated, int array of `model.event_shape`."""
    return np.asarray(model.ordering(), dtype=np.int32)


__all__ = [
    "REGISTRY",
    "apply_log_prob",
    "bits_per_dim",
    "build_model",
    "default_cond",
    "grouped_log_prob",
    "init_variables",
    "log_prob",
    "nats_to_bits_per_dim",
    "ordering",
]

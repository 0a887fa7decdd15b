"""Model registry and the likelihood side of the public API."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxar import settings
from jaxar.models import (
    base,
    common,
    configs,
    gated_pixelcnn,
    made,
    pixelcnn,
    pixelcnn_pp,
    pixelsnail,
    transformer,
    vqvae,
    wavenet,
)

# name -> model class; each class is built from `cfg.model` by `configs.build`.
grouped_log_prob = base.grouped_log_prob
nats_to_bits_per_dim = base.nats_to_bits_per_dim

REGISTRY = {
    "made": made.MADE,
    "pixelcnn": pixelcnn.PixelCNN,
    "gated_pixelcnn": gated_pixelcnn.GatedPixelCNN,
    "pixelcnn_pp": pixelcnn_pp.PixelCNNPP,
    "pixelsnail": pixelsnail.PixelSNAIL,
    "wavenet": wavenet.WaveNet,
    "transformer": transformer.Transformer,
    "vqvae": vqvae.VQVAE,
}


def build_model(cfg):
    """Builds the flax module named by `cfg.model.name` from `cfg.model` and `cfg.data`.

    Strict (`jaxar.models.configs`): a ValueError names any key under `cfg.model`
    the model does not read and any value it cannot take.
    """
    name = cfg.model.name
    if name not in REGISTRY:
        raise ValueError(f"model.name must be one of {sorted(REGISTRY)}, got {name!r}")
    num_levels = cfg.data.num_levels
    if not isinstance(num_levels, int) or isinstance(num_levels, bool) or num_levels < 2:
        raise ValueError(f"data.num_levels must be an int >= 2, got {num_levels!r}")
    model = configs.build(REGISTRY[name], cfg.model, cfg.data.shape, num_levels, name)
    # Builds, so checks, the likelihood; an autoencoder has none.
    if model.autoregressive and model.likelihood.num_levels != num_levels:
        raise ValueError(f"model.likelihood does not model data.num_levels={num_levels}")
    return model


def init_variables(model, cfg, key, x=None, labels=None, cond=None):
    """Initializes the model's variables, on batch `x` (random if None)."""
    init_batch = int(settings.Settings.of(cfg).train.init_batch_size)
    x_key, label_key, param_key = jax.random.split(key, 3)
    if x is None:
        x = jax.random.randint(x_key, (init_batch, *model.event_shape), 0, model.num_levels)
    if labels is None and model.num_classes:
        labels = jax.random.randint(label_key, (x.shape[0],), 0, model.num_classes)
    if cond is None:
        cond = model.derive_cond(x)
    common.check_inputs(model, x, labels, cond)
    with common.rng_context():
        variables = _init(model, param_key, x, labels, cond)
    common.remember_variables(model, variables)
    return variables


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key, x, labels, cond):
    return model.init({"params": key, "dropout": key}, x, labels, cond)


def log_prob(model, variables, x, labels=None, cond=None):
    """Per-dimension conditional log-probs in nats, float32 of x's shape.

    `lp[i] = log p(x_i | x_<i, labels)` where `<` follows `ordering(model)`. `variables`
    must be this model's (`common.check_variables`: same collections, names and shapes).
    """
    common.check_inputs(model, x, labels, cond)
    common.check_variables(model, variables)
    return _log_prob(model, variables, x, labels, cond)


@functools.partial(jax.jit, static_argnums=0)
def _log_prob(model, variables, x, labels, cond):
    return apply_log_prob(model, variables, x, labels, cond)


def apply_log_prob(model, variables, x, labels=None, cond=None, **apply_kwargs):
    """Traceable log_prob (no input checks): `model.apply` then the likelihood."""
    params = model.apply(variables, x, labels, cond, **apply_kwargs)
    return grouped_log_prob(model, params, x)


def bits_per_dim(model, variables, x, labels=None, cond=None):
    """Negative log-likelihood of each example in bits per dimension, shape [batch]."""
    lp = log_prob(model, variables, x, labels, cond)
    return nats_to_bits_per_dim(-lp.reshape(lp.shape[0], -1).sum(-1), model.event_shape)


def ordering(model) -> np.ndarray:
    """The step at which each dimension is generated, int array of `model.event_shape`."""
    return np.asarray(model.ordering(), dtype=np.int32)


__all__ = [
    "REGISTRY",
    "apply_log_prob",
    "bits_per_dim",
    "build_model",
    "grouped_log_prob",
    "init_variables",
    "log_prob",
    "nats_to_bits_per_dim",
    "ordering",
]

"""Mixed precision: the network computes in `train.compute_dtype`, nothing else does.

Params and optimizer state stay float32 (they are cast to the compute dtype
inside the loss, so gradients arrive in float32); model outputs are cast back
to float32 before the likelihood, and evaluation always runs in float32.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar import settings

# name -> dtype of every `train.compute_dtype` (`jaxar.settings.COMPUTE_DTYPES`).
COMPUTE_DTYPES = {name: getattr(jnp, name) for name in settings.COMPUTE_DTYPES}


def compute_dtype(cfg) -> jnp.dtype:
    """The dtype named by `train.compute_dtype`."""
    name = settings.Settings.of(cfg).train.compute_dtype
    settings.check_compute_dtype(name)
    return COMPUTE_DTYPES[name]


def cast_floats(tree, dtype):
    """Every floating-point array of `tree` in `dtype`; everything else unchanged."""
    is_float = lambda a: hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
    return jax.tree.map(lambda a: a.astype(dtype) if is_float(a) else a, tree)


def compute_in(dtype):
    """Context in which every flax module call takes and returns its float arrays in `dtype`.

    Models scale their integer inputs to float32 and build float32 constants
    (masks, position tables) themselves; casting at each module boundary keeps
    the whole network in `dtype` without a dtype argument in every model.
    """
    if np.dtype(dtype) == np.float32:
        return contextlib.nullcontext()

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        args, kwargs = cast_floats((args, kwargs), dtype)
        return cast_floats(next_fun(*args, **kwargs), dtype)

    return nn.intercept_methods(interceptor)

"""Helpers shared by the PixelCNN++ and PixelSNAIL tests (weight-normalized models)."""

from __future__ import annotations

import flax
import jax
import numpy as np

from jaxar.models import common
from jaxar.nn import shifted_layers


def random_variables(model, seed=0, scale=0.5):
    """Variables of the model's shapes filled with N(0, scale^2) noise, built on the host.

    Normalization and causality hold for any parameters; unlike
    `model_checks.random_variables` this compiles no init (hundreds of random
    draws, slow to compile on CPU for these deep models).
    """
    shapes = common.abstract_variables(model)  # also what check_variables compares
    rng = np.random.default_rng(seed)
    # device_put: jnp.asarray of a host array compiles a program per shape under jax 0.12.
    noise = lambda s: jax.device_put((scale * rng.standard_normal(s.shape)).astype(s.dtype))
    return jax.tree.map(noise, shapes)


def weight_norm_outputs(model, variables, x, labels=None) -> dict[str, np.ndarray]:
    """Output of every weight-normalized layer on x (eval mode), by module path: a
    convolution's before its shift (`WNConv.conv`)."""
    is_wn = lambda mdl, method: (isinstance(mdl, shifted_layers.WNConv) and method == "conv"
                                 or isinstance(mdl, shifted_layers.WNDense))

    @jax.jit
    def run(variables, x, labels):
        return model.apply(variables, x, labels, capture_intermediates=is_wn,
                           mutable=["intermediates"])[1]["intermediates"]

    flat = flax.traverse_util.flatten_dict(run(variables, x, labels), sep="/")
    return {path.removesuffix("/__call__").removesuffix("/conv"): np.asarray(out[0])
            for path, out in flat.items()}


def check_init_statistics(outputs: dict[str, np.ndarray]) -> int:
    """Asserts each layer's features have mean 0 and std 1 (0.1 for gate outputs).

    Returns the number of layers checked.
    """
    for path, y in outputs.items():
        y = y.reshape(-1, y.shape[-1]).astype(np.float64)
        want = shifted_layers.RESIDUAL_INIT_SCALE if path.endswith("gate_out") else 1.0
        np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4 * want, err_msg=path)
        np.testing.assert_allclose(y.std(0), want, rtol=1e-3, err_msg=path)
    return len(outputs)


def dropout_outputs(model, variables, x, labels=None):
    """Outputs for (eval, key 0), (eval, key 1), (train, key 0), (train, key 1)."""

    @jax.jit
    def run(variables, x, labels):
        out = []
        for train in (False, True):
            for seed in (0, 1):
                rngs = {"dropout": jax.random.key(seed)}
                out.append(model.apply(variables, x, labels, train=train, rngs=rngs))
        return out

    return [np.asarray(o) for o in run(variables, x, labels)]

"""Perturbed variables for the sequence-model checks, with the noise drawn on the host.

`model_checks.random_variables` draws its noise inside jit, which compiles one threefry
per leaf: about 10 s per model on a 2-core CPU, paid again by every pytest-xdist worker
that builds the module's fixture. NumPy noise costs nothing to compile and serves the
same purpose: no output of the model is trivially uniform.
"""

import jax
import numpy as np

import jaxar


def noisy_variables(model, cfg, seed=0, scale=0.3):
    """`jaxar.init_variables` with N(0, scale^2) noise (NumPy, from `seed`) added to every leaf."""
    variables = jaxar.init_variables(model, cfg, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + scale * rng.normal(size=x.shape).astype(x.dtype), variables)

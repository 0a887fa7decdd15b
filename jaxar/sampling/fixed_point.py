"""Fixed-point (Jacobi) sampling: whole-sample network passes until nothing changes.

Ancestral sampling is the solution of a triangular system: dimension `d_t = order[t]`
is `draw(params_t(x_<t), noise_t)` with the noise of `fold_in(key, t)`. Starting from
a guess, one full network pass redraws every dimension at once from its conditional,
with that same noise; after pass k the first k dimensions of the ordering are final
(by causality), and a pass that changes nothing has reached the one solution, the
sequential sample (Song et al., 2021, "Accelerating Feedforward Computation via
Parallel Nonlinear Equation Solving"). So it returns exactly what `ancestral` draws
with the same key, after at most D passes and usually far fewer: each pass is one
parallel network evaluation instead of one per dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.models import base
from jaxar.sampling import loop


def redraw(model, variables, key, labels, cond, temperature, known, known_mask, x):
    """One Jacobi pass: x `[B, *event_shape]` with every unknown dimension redrawn at once
    from its conditional given x, with the noise of its generation step (traceable).

    x is the ancestral sample of the full network exactly when `redraw(x) == x`: a check,
    one network pass, of any sampler's output (e.g. a cached decoder's, whose float
    rounding differs from the full network's)."""
    batch = known.shape[0]
    order = jnp.asarray(base.generation_order(model))
    x_flat = x.reshape(batch, -1)
    params = model.apply(variables, x, labels, cond)

    def one(t):
        dim = order[t]
        params_BF = loop.params_at(model, params, dim)
        return loop.draw(model, key, t, params_BF, x_flat, dim, temperature)

    values_TB = jax.vmap(one)(jnp.arange(order.shape[0]))
    x_new = x_flat.at[:, order].set(values_TB.T)
    return jnp.where(known_mask.reshape(batch, -1), known.reshape(batch, -1), x_new).reshape(
        known.shape)


def fixed_point(model, variables, key, labels, cond, temperature, known, known_mask):
    """`(samples [B, *event_shape], passes)`: Jacobi iteration to the ancestral sample
    (traceable; call it inside jit). `passes` counts full network evaluations."""
    num_dims = int(np.prod(model.event_shape))

    def not_done(carry):
        _, changed, passes = carry
        return changed & (passes < num_dims)

    def iterate(carry):
        x, _, passes = carry
        x_new = redraw(model, variables, key, labels, cond, temperature, known, known_mask, x)
        return x_new, jnp.any(x_new != x), passes + 1

    x0 = jnp.where(known_mask, known, 0)
    x, _, passes = jax.lax.while_loop(not_done, iterate, (x0, jnp.array(True), 0))
    return x, passes

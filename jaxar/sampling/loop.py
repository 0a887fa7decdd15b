"""The one ancestral sampling loop, and the naive decoder.

Every sampling method runs `ancestral`: it walks the generation steps of
`generation_order(model)` and at step t draws dimension `d_t = order[t]` with
the key `fold_in(key, t)` from the likelihood parameters a `Decoder` computes;
known dimensions (completion) are copied, never drawn. Two decoders that
compute the same parameters therefore draw the same samples: the naive decoder
(the whole network on the whole sample, every step) and each model's cached
decoder (`model.decoder`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxar.models import base


def group_of(model, x_flat_BD, dim):
    """`(x_group_BG, channel)`: the likelihood group holding flat dimension `dim`, and
    `dim`'s position in it (a pixel's channel when the likelihood couples them)."""
    group = model.event_shape[-1] if model.likelihood.groups_channels else 1
    start = (dim // group) * group
    return jax.lax.dynamic_slice_in_dim(x_flat_BD, start, group, axis=1), dim % group


def draw(model, key, t, params_BF, x_flat_BD, dim, temperature):
    """Draws dimension `dim` (flat index) at generation step t from its parameters `[B, F]`."""
    x_group_BG, channel = group_of(model, x_flat_BD, dim)
    return model.likelihood.sample(jax.random.fold_in(key, t), params_BF, x_group_BG, channel,
                                   temperature)


def write(x_flat_BD, dim, value_B, known_flat_BD, mask_flat_BD):
    """Writes the drawn values of `dim`, keeping known dimensions."""
    value_B = jnp.where(mask_flat_BD[:, dim], known_flat_BD[:, dim], value_B)
    return x_flat_BD.at[:, dim].set(value_B)


def params_at(model, params, dim):
    """Parameters `[B, F]` of the likelihood group holding flat dimension `dim`."""
    batch, num_params = params.shape[0], params.shape[-1]
    group = model.event_shape[-1] if model.likelihood.groups_channels else 1
    return params.reshape(batch, -1, num_params)[:, dim // group]


def ancestral(model, decoder: base.Decoder, key, temperature, known, known_mask, provide=None):
    """Samples `[B, *event_shape]` with `decoder` (traceable; call it inside jit).

    provide(t, params_BF, x_flat_BD, dim) -> int32 `[B]`: where the values of step t
    come from instead of a random draw (the entropy coder of `jaxar.codec`); `key`
    and `temperature` are then not read.
    """
    if provide is None:
        provide = lambda t, params_BF, x_flat, dim: draw(model, key, t, params_BF, x_flat, dim,
                                                         temperature)
    batch = known.shape[0]
    order = base.generation_order(model)
    num_dims, k = order.shape[0], decoder.dims_per_step
    num_calls = num_dims // k
    per_block = decoder.steps_per_block or num_calls
    if num_calls * k != num_dims or num_calls % per_block:
        raise ValueError(f"decoder steps ({k} x {per_block}) do not tile {num_dims} dimensions")
    order = jnp.asarray(order)
    known_flat, mask_flat = known.reshape(batch, -1), known_mask.reshape(batch, -1)

    def call(s, carry):
        x_flat, cache = carry
        params_BF, cache = decoder.step(cache, x_flat, s)

        def one(c, x_flat):  # step t = s * k + c of the call
            t = s * k + c
            value = provide(t, params_BF, x_flat, order[t])
            return write(x_flat, order[t], value, known_flat, mask_flat)

        # A call's k draws run in a loop, not unrolled: the likelihood's sampling code
        # (a pixel's channels: k = 3) is compiled once instead of k times.
        x_flat = one(0, x_flat) if k == 1 else jax.lax.fori_loop(0, k, one, x_flat)
        return x_flat, cache

    def call_unless_known(s, carry):  # nothing to draw where every sample knows the dims
        dims = jax.lax.dynamic_slice_in_dim(order, s * k, k)
        return jax.lax.cond(jnp.all(mask_flat[:, dims]), lambda s, c: c, call, s, carry)

    body = call_unless_known if decoder.skip_known else call

    def block(b, carry):
        if decoder.start_block is not None:
            x_flat, cache = carry
            carry = x_flat, decoder.start_block(cache, x_flat, b)
        return jax.lax.fori_loop(b * per_block, (b + 1) * per_block, body, carry)

    x0 = jnp.where(mask_flat, known_flat, 0)
    x_flat, _ = jax.lax.fori_loop(0, num_calls // per_block, block, (x0, decoder.cache))
    return x_flat.reshape(known.shape)


def naive_decoder(model, variables, labels, cond, batch: int) -> base.Decoder:
    """Reruns the whole network on the whole sample at every step."""
    order = jnp.asarray(base.generation_order(model))
    shape = (batch, *model.event_shape)

    def step(cache, x_flat, t):
        params = model.apply(variables, x_flat.reshape(shape), labels, cond)
        return params_at(model, params, order[t]), cache

    return base.Decoder((), step, skip_known=True)

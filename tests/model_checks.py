"""Checks that a model is a normalized autoregressive distribution, shared by the model tests."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxar


def tiny_config(name, shape, num_levels, **model) -> ml_collections.ConfigDict:
    """A config with just what `build_model` / `init_variables` read."""
    return ml_collections.ConfigDict(
        {
            "model": {"name": name, **model},
            "data": {"shape": tuple(shape), "num_levels": num_levels},
            "train": {"init_batch_size": 4},
        }
    )


def output_gradient(module, x, out_index, param_shift=0.0) -> np.ndarray:
    """d module(x)[out_index].sum() / d x, the module initialized on x (key 0) with
    `param_shift` added to every parameter (no accidental zero weights).

    Jitted: one init and one gradient program per module and input shape, whatever the
    index (the output is weighted by a 0/1 mask of the indexed elements; the other
    outputs' gradients are multiplied by exact zeros).
    """
    variables = _shifted_init(module, x, param_shift)
    mask = np.zeros(jax.eval_shape(module.apply, variables, x).shape, np.float32)
    mask[out_index] = 1.0
    return np.asarray(_masked_output_gradient(module, variables, x, mask))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _shifted_init(module, x, param_shift):
    variables = module.init(jax.random.key(0), x)
    return jax.tree.map(lambda p: p + param_shift, variables)


@functools.partial(jax.jit, static_argnums=0)
def _masked_output_gradient(module, variables, x, mask):
    return jax.grad(lambda x: jnp.sum(module.apply(variables, x) * mask))(x)


def all_inputs(event_shape, num_levels) -> np.ndarray:
    """Every possible x: int32 `[num_levels ** D, *event_shape]`."""
    dims = int(np.prod(event_shape))
    values = itertools.product(range(num_levels), repeat=dims)
    return np.array(list(values), np.int32).reshape(-1, *event_shape)


def random_variables(model, cfg, seed=0, scale=0.3, cond=None):
    """Initialized variables with every leaf perturbed, so no output is trivially uniform.

    `cond` `[1, *cond_shape]` (one map for the init batch) for models whose data
    serves it (integer codes: `model.cond_levels`)."""
    if cond is not None:
        batch = int(cfg.get("train", {}).get("init_batch_size", 16))
        cond = jnp.broadcast_to(cond, (batch, *cond.shape[1:]))
    variables = jaxar.init_variables(model, cfg, jax.random.key(seed), cond=cond)
    # The noise is drawn on the host: a jitted draw per leaf costs seconds of compilation
    # for the deeper models, and any noise serves.
    rng = np.random.default_rng(seed + 1)
    noisy = lambda x: x + (scale * rng.standard_normal(x.shape)).astype(x.dtype)
    return jax.tree.map(lambda x: jnp.asarray(noisy(np.asarray(x))), variables)


def joint_log_probs(model, variables, x, label=None, cond=None) -> np.ndarray:
    """log p(x) per example for a batch of inputs, with one label / cond for all."""
    n = x.shape[0]
    labels = None if label is None else np.full((n,), label, np.int32)
    if cond is not None:
        cond = np.broadcast_to(cond, (n, *cond.shape[1:]))
    lp = jaxar.log_prob(model, variables, x, labels, cond)
    return np.asarray(lp, np.float64).reshape(n, -1).sum(-1)


def total_probability(model, variables, label=None, cond=None) -> float:
    """sum over ALL x of p(x): exactly 1 for a normalized model; any leak shows."""
    x = all_inputs(model.event_shape, model.num_levels)
    return float(np.exp(joint_log_probs(model, variables, x, label, cond)).sum())


def check_causal_perturbation(model, variables, x, rng, trials=6, labels=None, cond=None):
    """Changing dimension j never changes log_prob of a dimension generated before j.

    Returns the number of trials in which some later dimension did change (a
    model that never changes is suspicious: callers assert it is > 0).
    """
    step = jaxar.ordering(model).ravel()
    base = np.asarray(jaxar.log_prob(model, variables, x, labels, cond)).reshape(x.shape[0], -1)
    x_flat = np.asarray(x).reshape(x.shape[0], -1)
    changed_later = 0
    for _ in range(trials):
        j = int(rng.integers(x_flat.shape[1]))
        x2 = x_flat.copy()
        x2[:, j] = (x2[:, j] + 1 + rng.integers(model.num_levels - 1)) % model.num_levels
        lp2 = np.asarray(
            jaxar.log_prob(model, variables, x2.reshape(x.shape), labels, cond)
        ).reshape(x.shape[0], -1)
        earlier = step < step[j]
        np.testing.assert_array_equal(
            lp2[:, earlier], base[:, earlier], err_msg=f"dimension {j} leaks into earlier ones"
        )
        changed_later += int(np.any(np.abs(lp2[:, ~earlier] - base[:, ~earlier]) > 1e-6))
    return changed_later


def chi_square_statistic(samples, probs) -> tuple[float, int]:
    """Pearson chi-square of sample counts against `probs` over all inputs (bins with
    expected count < 5 are pooled). Returns (statistic, degrees of freedom)."""
    n = samples.shape[0]
    observed = np.bincount(samples, minlength=probs.shape[0]).astype(np.float64)
    expected = probs * n
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, int(keep.sum() - 1)


def input_index(x, num_levels) -> np.ndarray:
    """Index of each x in `all_inputs` order (first dimension most significant)."""
    flat = np.asarray(x).reshape(x.shape[0], -1).astype(np.int64)
    weights = num_levels ** np.arange(flat.shape[1] - 1, -1, -1, dtype=np.int64)
    return flat @ weights


def decoder_call_params(decoder, x) -> np.ndarray:
    """A `base.Decoder` walked as `jaxar.sampling.loop.ancestral` walks it, over a complete
    x: the likelihood parameters of every call, `[calls, B, F]`."""
    x_flat = jnp.asarray(x).reshape(x.shape[0], -1)
    calls = x_flat.shape[1] // decoder.dims_per_step
    per_block = decoder.steps_per_block or calls
    step = jax.jit(decoder.step)
    start = jax.jit(decoder.start_block) if decoder.start_block else None
    cache, out = decoder.cache, []
    for b in range(calls // per_block):
        if start is not None:
            cache = start(cache, x_flat, b)
        for s in range(b * per_block, (b + 1) * per_block):
            params, cache = step(cache, x_flat, s)
            out.append(np.asarray(params))
    return np.stack(out)

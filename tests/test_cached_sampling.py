"""method="cached" draws exactly what method="naive" draws, and its per-pixel parameters are
those of a full forward pass (PixelCNN and Gated PixelCNN, `jaxar.nn.cache`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import decoded_pixel_params, tiny_config

import jaxar
from jaxar.models import decoding, gated_pixelcnn_cache

PIX = dict(features=6, num_layers=2, head_features=6, input_kernel_size=3)
GATED = dict(features=6, num_layers=2, head_features=6, kernel_size=3, input_kernel_size=3)
# (id, name, event shape, levels, model kwargs, temperature)
CASES = [
    ("pixelcnn-residual-bernoulli", "pixelcnn", (4, 5, 1), 2,
     dict(PIX, likelihood="bernoulli"), 0.7),
    ("pixelcnn-plain-categorical-class", "pixelcnn", (4, 4, 1), 4,
     dict(PIX, architecture="plain", input_kernel_size=5, num_classes=3), 1.0),
    ("pixelcnn-rgb-groups-class", "pixelcnn", (3, 3, 3), 4, dict(PIX, num_classes=2), 1.0),
    ("gated-bernoulli", "gated_pixelcnn", (4, 5, 1), 2, dict(GATED, likelihood="bernoulli"), 1.0),
    ("gated-rgb-class", "gated_pixelcnn", (3, 3, 3), 4, dict(GATED, num_classes=2), 1.3),
    ("gated-lowres", "gated_pixelcnn", (4, 4, 1), 2,
     dict(GATED, kernel_size=5, cond_shape=(2, 2, 1)), 1.0),
]
BATCH = 6


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    _, name, shape, levels, kwargs, temperature = request.param
    cfg = tiny_config(name, shape, levels, **kwargs)
    model = jaxar.build_model(cfg)
    # Random normal weights straight into the parameter tree (no init compile: fast tests).
    shapes = jax.eval_shape(lambda: jaxar.init_variables(model, cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(0.7 * rng.normal(size=s.shape), s.dtype),
                             shapes)
    labels = None
    if model.num_classes:
        labels = jnp.asarray(rng.integers(0, model.num_classes, BATCH), jnp.int32)
    cond = None
    if getattr(model, "cond_shape", None):
        cond = jax.random.normal(jax.random.key(3), (BATCH, *model.cond_shape))
    return model, variables, labels, cond, temperature


def test_cached_samples_equal_naive_samples(case):
    model, variables, labels, cond, temperature = case
    rng = np.random.default_rng(1)
    known = rng.integers(0, model.num_levels, (BATCH, *model.event_shape)).astype(np.int32)
    known_mask = rng.random(known.shape) < 0.4
    for completion in ({}, dict(known=known, known_mask=known_mask)):
        kwargs = dict(labels=labels, cond=cond, temperature=temperature, **completion)
        naive = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="naive",
                             **kwargs)
        cached = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="cached",
                              **kwargs)
        np.testing.assert_array_equal(cached, naive)
        assert len(np.unique(np.asarray(cached))) > 1  # not a degenerate model
    np.testing.assert_array_equal(np.asarray(cached)[known_mask], known[known_mask])
    auto = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="auto", **kwargs)
    np.testing.assert_array_equal(auto, cached)


STEPS = {"PixelCNN": decoding.pixelwise_steps, "GatedPixelCNN": gated_pixelcnn_cache.steps}


@pytest.mark.parametrize("case", [c for c in CASES if "rgb" in c[0] or "lowres" in c[0]],
                         ids=lambda c: c[0], indirect=True)
def test_cached_pixel_parameters_equal_a_full_forward_pass(case):
    """Run the decoder over a fixed image, pixel by pixel, channel by channel."""
    model, variables, labels, cond, _ = case
    x = np.random.default_rng(2).integers(0, model.num_levels, (BATCH, *model.event_shape))
    x = jnp.asarray(x, jnp.int32)
    full = np.asarray(jax.jit(model.apply)(variables, x, labels, cond))  # [B, H, W, C, F]
    steps = STEPS[model.__class__.__name__](model, variables, labels, cond, x)
    # One pass per channel, as the sampler makes them; x is complete here.
    for i, j, params in decoded_pixel_params(steps, x, passes=model.event_shape[-1]):
        np.testing.assert_allclose(np.asarray(params)[:, 0, 0], full[:, i, j], atol=1e-4,
                                   rtol=1e-4, err_msg=f"pixel {(i, j)}")

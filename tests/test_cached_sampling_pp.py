"""method="cached" draws exactly what method="naive" draws for PixelCNN++ and raster PixelSNAIL,
and their per-pixel parameters are those of a full forward pass
(`jaxar.models.pixelcnn_pp_cache`, `jaxar.models.pixelsnail_cache`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import decoded_pixel_params, tiny_config

import jaxar
from jaxar.models import pixelcnn_pp_cache, pixelsnail_cache

PP = dict(features=8, num_resnets=1, num_mixtures=2)
SNAIL = dict(
    features=8,
    num_blocks=2,
    num_resnets=1,
    key_features=4,
    value_features=4,
    num_heads=2,
    num_mixtures=2,
)
# (id, name, event shape, levels, model kwargs, temperature)
CASES = [
    (
        "pp-3res-class",
        "pixelcnn_pp",
        (8, 8, 3),
        16,
        dict(PP, num_resolutions=3, num_classes=3),
        1.0,
    ),
    (
        "pp-2res-2resnets",
        "pixelcnn_pp",
        (4, 6, 3),
        32,
        dict(PP, num_resolutions=2, num_resnets=2),
        0.8,
    ),
    (
        "snail-elu-class",
        "pixelsnail",
        (3, 5, 3),
        16,
        dict(SNAIL, nonlinearity="elu", num_classes=2),
        1.3,
    ),
]
STEPS = {"PixelCNNPP": pixelcnn_pp_cache.steps, "PixelSNAIL": pixelsnail_cache.steps}
BATCH = 4


def _build(name, shape, levels, kwargs):
    cfg = tiny_config(name, shape, levels, **kwargs)
    model = jaxar.build_model(cfg)
    # Random weights straight into the parameter tree (no data-dependent init compile).
    shapes = jax.eval_shape(lambda: jaxar.init_variables(model, cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
    labels = None
    if model.num_classes:
        labels = jnp.asarray(rng.integers(0, model.num_classes, BATCH), jnp.int32)
    return model, variables, labels


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    _, name, shape, levels, kwargs, temperature = request.param
    return (*_build(name, shape, levels, kwargs), temperature)


def test_cached_samples_equal_naive_samples(case):
    model, variables, labels, temperature = case
    rng = np.random.default_rng(1)
    known = rng.integers(0, model.num_levels, (BATCH, *model.event_shape)).astype(np.int32)
    known_mask = rng.random(known.shape) < 0.4
    for completion in ({}, dict(known=known, known_mask=known_mask)):
        kwargs = dict(labels=labels, temperature=temperature, **completion)
        naive = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="naive", **kwargs)
        cached = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="cached", **kwargs)
        np.testing.assert_array_equal(cached, naive)
        assert len(np.unique(np.asarray(cached))) > 2  # not a degenerate model
    np.testing.assert_array_equal(np.asarray(cached)[known_mask], known[known_mask])
    auto = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="auto", **kwargs)
    np.testing.assert_array_equal(auto, cached)


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=lambda c: c[0], indirect=True)
def test_cached_pixel_parameters_equal_a_full_forward_pass(case):
    """Run the decoder over a fixed image, pixel by pixel, once per pixel."""
    model, variables, labels, _ = case
    x = np.random.default_rng(2).integers(0, model.num_levels, (BATCH, *model.event_shape))
    x = jnp.asarray(x, jnp.int32)
    full = np.asarray(jax.jit(model.apply)(variables, x, labels))  # [B, H, W, F]
    steps = STEPS[type(model).__name__](model, variables, labels, None, x)
    for i, j, params in decoded_pixel_params(steps, x):
        np.testing.assert_allclose(
            np.asarray(params)[:, 0, 0], full[:, i, j], atol=1e-5, rtol=1e-5,
            err_msg=f"pixel {(i, j)}",
        )


@pytest.mark.parametrize(
    "name,layout",
    [("pixelcnn_pp", pixelcnn_pp_cache.layout), ("pixelsnail", pixelsnail_cache.layout)],
)
def test_layouts_name_every_parameter(name, layout):
    """The decoders read the model's parameters by name: every one, each once."""
    kwargs = PP if name == "pixelcnn_pp" else SNAIL
    for extra in ({}, dict(num_resnets=3), dict(num_resolutions=2, num_blocks=3)):
        if name == "pixelsnail":
            extra.pop("num_resolutions", None)
        else:
            extra.pop("num_blocks", None)
        model, variables, _ = _build(name, (4, 4, 3), 16, {**kwargs, **extra})
        leaves = jax.tree.leaves(layout(model))
        assert sorted(leaves) == sorted(variables["params"])


def test_non_raster_pixelsnail_refuses_cached_and_auto_samples_naively():
    model, variables, _ = _build(
        "pixelsnail", (3, 3, 3), 16, dict(SNAIL, ordering="zigzag", num_blocks=1)
    )
    with pytest.raises(ValueError, match="method='naive'"):
        jaxar.sample(model, variables, jax.random.key(5), BATCH, method="cached")
    naive = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="naive")
    auto = jaxar.sample(model, variables, jax.random.key(5), BATCH, method="auto")
    np.testing.assert_array_equal(auto, naive)

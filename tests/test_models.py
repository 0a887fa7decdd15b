"""MADE, PixelCNN and Gated PixelCNN: causality at full size, family specifics, input checks."""

import functools

import jax
import numpy as np
import pytest
from model_checks import (
    all_inputs,
    check_causal_perturbation,
    random_variables,
    tiny_config,
)

import jaxar

# Every family's normalization, causality, sampler agreement, cached == naive and
# completion are in tests/test_protocol.py; these are the PixelCNN/MADE/Gated specifics.
PIX = dict(features=6, num_layers=2, head_features=6, input_kernel_size=3)
GATED = dict(features=6, num_layers=2, head_features=6, kernel_size=3, input_kernel_size=3)

BIG = [
    ("made", dict(hidden=(64,), ordering="random"), (6, 6, 1), 2),
    ("pixelcnn", dict(PIX, num_layers=3), (8, 8, 3), 256),
    ("pixelcnn", dict(PIX, architecture="plain", input_kernel_size=5), (8, 8, 3), 256),
    ("gated_pixelcnn", dict(GATED, num_classes=3), (8, 8, 3), 256),
]


@pytest.mark.parametrize("name,kwargs,shape,levels", BIG, ids=[f"{b[0]}-{i}" for i, b in
                                                               enumerate(BIG)])
def test_perturbation_causality(name, kwargs, shape, levels):
    """Changing a (sub-)pixel changes no log_prob earlier in the ordering."""
    cfg = tiny_config(name, shape, levels, **kwargs)
    model = jaxar.build_model(cfg)
    variables = random_variables(model, cfg)
    rng = np.random.default_rng(0)
    x = rng.integers(0, levels, (2, *shape)).astype(np.int32)
    labels = np.array([0, 2], np.int32) if model.num_classes else None
    assert check_causal_perturbation(model, variables, x, rng, trials=8, labels=labels) > 0


def test_batchnorm_in_training_mode_leaks_future_pixels():
    """Batch statistics mix positions: the train-mode output at pixel 0 depends on the last
    pixel. That is why norm='none' is the default; eval mode (running averages) is causal."""
    cfg = tiny_config("pixelcnn", (4, 4, 1), 2, **PIX, likelihood="bernoulli", norm="batch")
    model = jaxar.build_model(cfg)
    variables = jaxar.init_variables(model, cfg, jax.random.key(0))
    x = np.zeros((4, 4, 4, 1), np.int32)

    @functools.partial(jax.jit, static_argnums=1)  # eagerly: a program per op
    def first_pixel_logit(x, train):
        out = model.apply(variables, x, train=train, mutable=["batch_stats"] if train else False)
        return (out[0] if train else out)[0, 0, 0, 0, 0]

    x_changed = x.copy()
    x_changed[:, 2:] = 1  # the bottom half of every image
    assert first_pixel_logit(x, True) != first_pixel_logit(x_changed, True)
    assert first_pixel_logit(x, False) == first_pixel_logit(x_changed, False)


def test_made_ensemble_is_normalized_and_orderings_differ():
    cfg = tiny_config("made", (2, 3, 1), 2, hidden=(16,), ordering="random", num_masks=3)
    model = jaxar.build_model(cfg)
    variables = random_variables(model, cfg)
    x = all_inputs(model.event_shape, 2)
    lp = model.ensemble_log_prob(variables, x, None, 3)
    assert float(np.exp(np.asarray(lp, np.float64)).sum()) == pytest.approx(1.0, abs=1e-4)
    assert not np.array_equal(model.ordering(0), model.ordering(1))
    np.testing.assert_array_equal(jaxar.ordering(model), model.ordering(0))
    with pytest.raises(ValueError, match="ensemble_masks"):
        model.ensemble_log_prob(variables, x, None, 4)


def test_ordering_is_raster_for_convolutional_models():
    cfg = tiny_config("pixelcnn", (2, 3, 2), 4, **dict(PIX, features=4, head_features=4))
    order = jaxar.ordering(jaxar.build_model(cfg))
    assert order.shape == (2, 3, 2)
    np.testing.assert_array_equal(order.ravel(), np.arange(12))


@pytest.fixture(scope="module")
def conditional():
    cfg = tiny_config("pixelcnn", (3, 3, 1), 4, **PIX, num_classes=2)
    model = jaxar.build_model(cfg)
    return model, jaxar.init_variables(model, cfg, jax.random.key(0))


@pytest.mark.parametrize(
    "x,labels,match",
    [
        (np.zeros((2, 3, 3), np.int32), np.zeros(2, np.int32), r"x must have shape \[batch, 3"),
        (np.zeros((2, 3, 3, 1), np.float32), np.zeros(2, np.int32), "integer"),
        (np.full((2, 3, 3, 1), 4, np.int32), np.zeros(2, np.int32), r"\[0, 4\)"),
        (np.full((2, 3, 3, 1), -1, np.int32), np.zeros(2, np.int32), r"\[0, 4\)"),
        (np.zeros((2, 3, 3, 1), np.int32), None, "labels are required"),
        (np.zeros((2, 3, 3, 1), np.int32), np.zeros(3, np.int32), r"labels must have shape \[2\]"),
        (np.zeros((2, 3, 3, 1), np.int32), np.full(2, 2, np.int32), r"labels must lie in \[0, 2\)"),
    ],
)
def test_bad_inputs_raise_value_error(conditional, x, labels, match):
    model, variables = conditional
    with pytest.raises(ValueError, match=match):
        jaxar.log_prob(model, variables, x, labels)


def test_bad_arguments_raise_value_error(conditional):
    model, variables = conditional
    key = jax.random.key(0)
    labels = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="num_samples"):
        jaxar.sample(model, variables, key, 0, labels=np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="temperature"):
        jaxar.sample(model, variables, key, 2, labels=labels, temperature=0.0)
    with pytest.raises(ValueError, match="method"):
        jaxar.sample(model, variables, key, 2, labels=labels, method="fast")
    with pytest.raises(ValueError, match="known_mask must have shape"):
        jaxar.sample(model, variables, key, 2, labels=labels,
                     known=np.zeros((2, 3, 3, 1), np.int32), known_mask=np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="known and known_mask"):
        jaxar.sample(model, variables, key, 2, labels=labels,
                     known=np.zeros((2, 3, 3, 1), np.int32))
    uncond = jaxar.build_model(tiny_config("made", (3, 3, 1), 2, hidden=(8,)))
    with pytest.raises(ValueError, match="labels must be None"):
        jaxar.log_prob(uncond, {}, np.zeros((2, 3, 3, 1), np.int32), labels)


@pytest.mark.parametrize(
    "name,key,value,match",
    [
        ("resnet", "name", "resnet", "model.name must be one of"),
        ("pixelcnn", "norm", "layer", "model.norm"),
        ("pixelcnn", "architecture", "dense", "model.architecture"),
        ("pixelcnn", "kernel_size", 4, "kernel_size"),
        ("made", "ordering", "spiral", "model.ordering"),
        ("made", "likelihood", "gaussian", "model.likelihood"),
        ("gated_pixelcnn", "cond_shape", (3, 3, 1), "model.cond_shape"),
        ("gated_pixelcnn", "cond_levels", 3, r"model\.cond_levels=3 .* needs model\.cond_shape"),
    ],
)
def test_bad_model_config_raises_value_error(name, key, value, match):
    cfg = tiny_config(name, (4, 4, 1), 2)
    cfg.model[key] = value
    with pytest.raises(ValueError, match=match):
        jaxar.init_variables(jaxar.build_model(cfg), cfg, jax.random.key(0))


def test_bernoulli_needs_two_levels_and_data_shape_rank():
    with pytest.raises(ValueError, match="num_levels == 2"):
        jaxar.build_model(tiny_config("pixelcnn", (4, 4, 1), 4, likelihood="bernoulli"))
    with pytest.raises(ValueError, match="data.shape"):
        jaxar.build_model(tiny_config("pixelcnn", (16,), 2))


def test_bits_per_dim_is_nll_over_dims_log2(conditional):
    model, variables = conditional
    x = np.random.default_rng(0).integers(0, 4, (3, 3, 3, 1)).astype(np.int32)
    labels = np.array([0, 1, 0], np.int32)
    lp = np.asarray(jaxar.log_prob(model, variables, x, labels))
    assert lp.shape == x.shape and lp.dtype == np.float32 and (lp <= 0).all()
    expected = -lp.reshape(3, -1).sum(-1) / (9 * np.log(2))
    np.testing.assert_allclose(jaxar.bits_per_dim(model, variables, x, labels), expected,
                               rtol=1e-5)

"""MADE, PixelCNN and Gated PixelCNN are normalized autoregressive distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import (
    all_inputs,
    check_causal_perturbation,
    chi_square_statistic,
    input_index,
    joint_log_probs,
    random_variables,
    tiny_config,
    total_probability,
)

import jaxar
from jaxar.models import made

# (id, name, model kwargs) of every family and conditioning mode, on tiny event spaces.
PIX = dict(features=6, num_layers=2, head_features=6, input_kernel_size=3)
GATED = dict(features=6, num_layers=2, head_features=6, kernel_size=3, input_kernel_size=3)
CASES = [
    ("made", "made", (3, 3, 1), 2, dict(hidden=(16, 16))),
    ("made-random-4lev-class", "made", (2, 2, 1), 4,
     dict(hidden=(16,), ordering="random", num_masks=3, num_classes=3)),
    ("made-rgb-categorical", "made", (1, 2, 3), 3, dict(hidden=(16,), likelihood="categorical")),
    ("pixelcnn-bernoulli", "pixelcnn", (3, 3, 1), 2, dict(PIX, likelihood="bernoulli")),
    ("pixelcnn-4lev-class", "pixelcnn", (2, 2, 1), 4, dict(PIX, num_classes=2)),
    ("pixelcnn-rgb", "pixelcnn", (2, 2, 3), 2, dict(PIX, num_classes=2)),
    ("pixelcnn-plain", "pixelcnn", (3, 3, 1), 2,
     dict(PIX, architecture="plain", likelihood="bernoulli")),
    ("gated", "gated_pixelcnn", (3, 3, 1), 2, dict(GATED, likelihood="bernoulli")),
    ("gated-rgb-class", "gated_pixelcnn", (2, 2, 3), 2, dict(GATED, num_classes=2)),
    ("gated-spatial", "gated_pixelcnn", (4, 4, 1), 2, dict(GATED, cond_shape=(2, 2, 1))),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def tiny(request):
    _, name, shape, levels, kwargs = request.param
    cfg = tiny_config(name, shape, levels, **kwargs)
    model = jaxar.build_model(cfg)
    cond = None
    if getattr(model, "cond_shape", None):
        cond = jax.random.normal(jax.random.key(3), (1, *model.cond_shape))
    return model, random_variables(model, cfg), cond


def test_probabilities_of_all_inputs_sum_to_one(tiny):
    model, variables, cond = tiny
    labels = range(model.num_classes) if model.num_classes else [None]
    for label in labels:
        assert total_probability(model, variables, label, cond) == pytest.approx(1.0, abs=1e-4)


def test_naive_sampler_matches_likelihood(tiny):
    """Sample frequencies over every input agree with exp(log_prob) (chi-square)."""
    model, variables, cond = tiny
    label = model.num_classes - 1 if model.num_classes else None
    x_all = all_inputs(model.event_shape, model.num_levels)
    probs = np.exp(joint_log_probs(model, variables, x_all, label, cond))
    n = 4000 if x_all.shape[0] <= 512 else 16000
    labels = None if label is None else jnp.full((n,), label, jnp.int32)
    cond_n = None if cond is None else jnp.broadcast_to(cond, (n, *cond.shape[1:]))
    xs = jaxar.sample(model, variables, jax.random.key(7), n, labels=labels, cond=cond_n,
                      method="naive")
    stat, dof = chi_square_statistic(input_index(xs, model.num_levels), probs)
    # 99.9% quantile of chi-square: dof + 3.1 sqrt(2 dof) + 10 is a safe upper bound.
    assert stat < dof + 3.1 * np.sqrt(2 * dof) + 10, (stat, dof)


def test_completion_keeps_known_and_is_deterministic(tiny):
    model, variables, cond = tiny
    n = 8
    rng = np.random.default_rng(0)
    known = rng.integers(0, model.num_levels, (n, *model.event_shape)).astype(np.int32)
    mask = rng.random(known.shape) < 0.5
    labels = jnp.zeros((n,), jnp.int32) if model.num_classes else None
    cond_n = None if cond is None else jnp.broadcast_to(cond, (n, *cond.shape[1:]))
    kwargs = dict(labels=labels, cond=cond_n, known=known, known_mask=mask, method="naive")
    xs = np.asarray(jaxar.sample(model, variables, jax.random.key(1), n, **kwargs))
    np.testing.assert_array_equal(xs[mask], known[mask])
    assert xs.min() >= 0 and xs.max() < model.num_levels
    again = jaxar.sample(model, variables, jax.random.key(1), n, **kwargs)
    np.testing.assert_array_equal(xs, again)


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
    lp = made.ensemble_log_prob(model, variables, x, num_masks=3)
    assert float(np.exp(np.asarray(lp, np.float64)).sum()) == pytest.approx(1.0, abs=1e-4)
    assert not np.array_equal(model.ordering(0), model.ordering(1))
    np.testing.assert_array_equal(jaxar.ordering(model), model.ordering(0))
    with pytest.raises(ValueError, match="num_masks"):
        made.ensemble_log_prob(model, variables, x, num_masks=4)


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
        ("made", "ordering", "zigzag", "model.ordering"),
        ("made", "likelihood", "gaussian", "model.likelihood"),
        ("gated_pixelcnn", "cond_shape", (3, 3, 1), "model.cond_shape"),
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

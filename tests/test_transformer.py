"""Pixel Transformer: orderings, normalization, causality, KV-cache == naive generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
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
from jaxar.models import transformer
from jaxar.models.common import rng_context
from jaxar.training import reporting

TINY = dict(features=8, num_heads=2, num_layers=2)


@pytest.fixture(scope="module")
def learned():
    """3x3 binary images, learned positions, 3 classes. Other orderings and the
    unconditional clone share its variables (flax ignores the unused label embedding)."""
    cfg = tiny_config("transformer", (3, 3, 1), 2, num_classes=3, **TINY)
    model = jaxar.build_model(cfg)
    return model, random_variables(model, cfg)


@pytest.fixture(scope="module")
def sinusoidal():
    """Sinusoidal positions, one block: no parameter depends on the event shape, so one
    set of variables serves images and sequences of any size."""
    cfg = tiny_config("transformer", (3, 3, 1), 2, position="sinusoidal",
                      **{**TINY, "num_layers": 1})
    model = jaxar.build_model(cfg)
    return model, random_variables(model, cfg, seed=1)


# --- orderings ------------------------------------------------------------------------------


def test_zigzag_walks_anti_diagonals_alternating():
    np.testing.assert_array_equal(
        transformer.make_ordering("zigzag", (3, 3, 1))[..., 0],
        [[0, 1, 5], [2, 4, 6], [3, 7, 8]])
    steps = transformer.make_ordering("zigzag", (2, 2, 2))  # channels in order per pixel
    np.testing.assert_array_equal(steps, [[[0, 1], [2, 3]], [[4, 5], [6, 7]]])


def test_random_ordering_is_a_seeded_permutation(learned):
    model, _ = learned
    steps = jaxar.ordering(model.clone(ordering_name="random", ordering_seed=3))
    assert steps.shape == (3, 3, 1) and sorted(steps.ravel()) == list(range(9))
    again = jaxar.ordering(model.clone(ordering_name="random", ordering_seed=3))
    other = jaxar.ordering(model.clone(ordering_name="random", ordering_seed=4))
    np.testing.assert_array_equal(steps, again)
    assert not np.array_equal(steps, other)
    np.testing.assert_array_equal(jaxar.ordering(model), np.arange(9).reshape(3, 3, 1))


# --- normalization and causality --------------------------------------------------------------


@pytest.mark.parametrize("ordering", ["raster", "zigzag", "random"])
def test_normalized_for_every_ordering_and_label(learned, ordering):
    model, variables = learned
    model = model.clone(ordering_name=ordering)
    for label in (0, 2):
        assert total_probability(model, variables, label=label) == pytest.approx(1.0, abs=1e-4)
    x = all_inputs(model.event_shape, 2)
    gap = joint_log_probs(model, variables, x, 0) - joint_log_probs(model, variables, x, 2)
    assert np.abs(gap).max() > 1e-2  # the label matters


@pytest.mark.parametrize("shape", [(10,)])  # (3, 3, 1): tests/test_protocol.py
def test_normalized_with_sinusoidal_positions(sinusoidal, shape):
    model, variables = sinusoidal
    total = total_probability(model.clone(event_shape=shape), variables)
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("ordering", ["raster", "zigzag", "random"])
def test_causal_in_the_models_ordering(sinusoidal, ordering):
    model, variables = sinusoidal
    model = model.clone(event_shape=(6, 6, 2), ordering_name=ordering, ordering_seed=5)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 2, (3, 6, 6, 2)), jnp.int32)
    assert check_causal_perturbation(model, variables, x, rng, trials=8) > 0


# --- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordering", ["raster", "zigzag"])
def test_cached_equals_naive_with_labels_and_completion(learned, ordering):
    model, variables = learned
    model = model.clone(ordering_name=ordering)
    rng = np.random.default_rng(1)
    labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    known = jnp.asarray(rng.integers(0, 2, (8, 3, 3, 1)), jnp.int32)
    known_mask = jnp.asarray(rng.random((8, 3, 3, 1)) < 0.4).at[:, 0, 0].set(True)
    key = jax.random.key(2)
    free = [jaxar.sample(model, variables, key, 8, labels=labels, method=m)
            for m in ("naive", "cached")]
    np.testing.assert_array_equal(np.asarray(free[1]), np.asarray(free[0]))
    assert len({tuple(r) for r in np.asarray(free[0]).reshape(8, -1).tolist()}) > 4
    done = [jaxar.sample(model, variables, key, 8, labels=labels, known=known,
                         known_mask=known_mask, temperature=0.7, method=m)
            for m in ("naive", "cached")]
    np.testing.assert_array_equal(np.asarray(done[1]), np.asarray(done[0]))
    np.testing.assert_array_equal(np.asarray(done[0])[known_mask], np.asarray(known)[known_mask])


def test_cached_equals_naive_random_order_on_larger_images(sinusoidal):
    model, variables = sinusoidal
    model = model.clone(event_shape=(5, 5, 2), ordering_name="random", ordering_seed=1)
    key = jax.random.key(3)
    naive = jaxar.sample(model, variables, key, 4, method="naive")
    cached = jaxar.sample(model, variables, key, 4, method="cached")
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))


def test_sampler_matches_likelihood(learned):
    """Chi-square of 20,000 KV-cache samples (zigzag order, label 1) against p(x) of all
    512 images; the same samples must fail against the distribution of another label."""
    model, variables = learned
    model = model.clone(ordering_name="zigzag")
    n = 20_000
    samples = jaxar.sample(model, variables, jax.random.key(4), n,
                           labels=jnp.ones(n, jnp.int32))
    x = all_inputs(model.event_shape, 2)
    index = input_index(np.asarray(samples), 2)
    for label, fits in ((1, True), (2, False)):
        probs = np.exp(joint_log_probs(model, variables, x, label))
        stat, dof = chi_square_statistic(index, probs)
        assert (stat < scipy.stats.chi2.ppf(0.999, dof)) == fits, (label, stat, dof)


# --- config and input errors ------------------------------------------------------------------


@pytest.mark.parametrize("overrides, shape, match", [
    ({"ordering": "spiral"}, (3, 3, 1), r"model\.ordering"),
    ({"ordering": "zigzag"}, (9,), r"model\.ordering='zigzag'"),
    ({"features": 10, "num_heads": 4}, (3, 3, 1), r"model\.features"),
    ({"position": "rotary"}, (3, 3, 1), r"model\.position"),
    ({"likelihood": "dmol"}, (3, 3, 1), r"model\.likelihood"),
    ({}, (3, 3), r"data\.shape"),
])
def test_bad_config_raises(overrides, shape, match):
    with pytest.raises(ValueError, match=match):
        jaxar.build_model(tiny_config("transformer", shape, 2, **overrides))


def test_cond_is_rejected(learned):
    model, variables = learned
    with pytest.raises(ValueError, match="cond must be None"):
        jaxar.sample(model, variables, jax.random.key(0), 2, labels=jnp.zeros(2, jnp.int32),
                     cond=jnp.zeros((2, 1)))


def test_smoke_config_trains(tmp_path):
    cfg = jaxar.load_config("experiments/transformer_mnist.py:smoke")
    jaxar.train_and_evaluate(cfg, str(tmp_path))
    rows = reporting.read_metrics(tmp_path)
    train_bpd = [r["train/bpd"] for r in rows if "train/bpd" in r]
    assert len(train_bpd) == 3 and all(np.isfinite(train_bpd))
    assert len([r for r in rows if "eval/bpd" in r]) == 2
    assert (tmp_path / "samples_6.png").exists()


def test_attention_sees_no_later_step_and_cached_steps_match():
    attn = transformer.CausalSelfAttention(features=8, num_heads=2)
    h = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 8)), jnp.float32)
    with rng_context():
        variables = jax.jit(attn.init)(jax.random.key(0), h)
    full = lambda h: attn.apply(variables, h)[0].sum(-1)  # [T]
    seen = np.abs(np.asarray(jax.jit(jax.jacobian(full))(h))[:, 0].sum(-1)) > 0  # [t, s]
    np.testing.assert_array_equal(seen, np.tril(np.ones((5, 5), bool)))
    step = jax.jit(lambda h_BD, t, cache: attn.apply(variables, h_BD, t, cache, method=attn.step))
    out_BTD = jax.jit(attn.apply)(variables, h)
    cache = (jnp.zeros((1, 5, 2, 4)), jnp.zeros((1, 5, 2, 4)))
    for t in range(5):
        out, cache = step(h[:, t], t, cache)
        np.testing.assert_allclose(out, out_BTD[:, t], atol=1e-5)

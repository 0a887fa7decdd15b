"""WaveNet: normalization, causality, receptive field, fast (queued) == naive generation."""

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
)

import jaxar
from jaxar.models import wavenet
from jaxar.models.common import rng_context
from jaxar.training import reporting

TINY = dict(residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
            num_stacks=1, layers_per_stack=3, cond_features=3)


@pytest.fixture(scope="module")
def conditional():
    """A 2-level WaveNet over length 10 with 3 classes and local features (5 frames, depth 1).

    Its variables also serve the unconditional clone (flax ignores the unused label and
    conditioning parameters) and clones of other lengths (no parameter depends on the
    length, except the cond upsampling, whose stride is kept at 2).
    """
    cfg = tiny_config("wavenet", (10,), 2, num_classes=3, cond_shape=(5, 1), **TINY)
    model = jaxar.build_model(cfg)
    return model, random_variables(model, cfg)


def unconditional(model, variables, length=10):
    """The same network without its label and conditioning layers, and of `variables` the
    ones it has (the API refuses variables of another model, extra layers included)."""
    model = model.clone(event_shape=(length,), num_classes=0, cond_shape=None)
    x = jnp.zeros((1, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x))

    def keep(want, have):
        return {k: keep(v, have[k]) if hasattr(v, "keys") else have[k] for k, v in want.items()}

    return model, keep(shapes, variables)


def random_cond(seed, batch, frames):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, frames, 1)), jnp.float32)


# Normalization and cached == naive at the table's sizes: tests/test_protocol.py.


def test_conditioning_changes_the_distribution(conditional):
    model, variables = conditional
    x = all_inputs(model.event_shape, 2)
    cond = random_cond(0, 1, 5)
    base = joint_log_probs(model, variables, x, 0, cond)
    assert np.abs(joint_log_probs(model, variables, x, 1, cond) - base).max() > 1e-2
    assert np.abs(joint_log_probs(model, variables, x, 0, random_cond(1, 1, 5)) - base).max() > 1e-2


def test_causal_on_long_sequences(conditional):
    model, variables = conditional
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 2, (3, 64)), jnp.int32)
    assert check_causal_perturbation(*unconditional(model, variables, 64), x, rng) > 0
    long_model = model.clone(event_shape=(64,), cond_shape=(32, 1))
    labels, cond = jnp.array([0, 1, 2]), random_cond(2, 3, 32)
    changed = check_causal_perturbation(long_model, variables, x, rng, labels=labels, cond=cond)
    assert changed > 0


def test_receptive_field_is_exact(conditional):
    model, variables = conditional
    long_model, variables = unconditional(model, variables, 64)
    field = long_model.receptive_field
    assert field == 2 + 1 + 2 + 4
    x = jnp.asarray(np.random.default_rng(3).integers(0, 2, (4, 64)), jnp.int32)
    base = np.asarray(jaxar.log_prob(long_model, variables, x))
    t = 40
    for back, seen in ((field, True), (field + 1, False)):
        flipped = x.at[:, t - back].set(1 - x[:, t - back])
        delta = np.abs(np.asarray(jaxar.log_prob(long_model, variables, flipped)) - base)[:, t]
        assert (delta.max() > 1e-6) == seen, f"x[t - {back}] seen: {delta}"


def test_cached_equals_naive_unconditional(conditional):
    model, variables = conditional
    long_model, variables = unconditional(model, variables, 48)
    key = jax.random.key(7)
    naive = jaxar.sample(long_model, variables, key, 6, method="naive")
    cached = jaxar.sample(long_model, variables, key, 6, method="cached")
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))
    assert len({tuple(row) for row in np.asarray(naive).tolist()}) == 6  # not degenerate
    other = jaxar.sample(long_model, variables, jax.random.key(8), 6)
    assert not np.array_equal(np.asarray(other), np.asarray(naive))


def test_cached_equals_naive_with_labels_cond_and_completion(conditional):
    model, variables = conditional
    long_model = model.clone(event_shape=(48,), cond_shape=(24, 1))
    rng = np.random.default_rng(4)
    labels, cond = jnp.array([0, 1, 2, 0, 1, 2]), random_cond(5, 6, 24)
    known = jnp.asarray(rng.integers(0, 2, (6, 48)), jnp.int32)
    known_mask = jnp.asarray(rng.random((6, 48)) < 0.5)
    known_mask = known_mask.at[:, :8].set(True)  # a prefix known in all: skipped by naive
    key = jax.random.key(9)
    kwargs = dict(labels=labels, cond=cond, temperature=0.8)
    free = [jaxar.sample(long_model, variables, key, 6, method=m, **kwargs)
            for m in ("naive", "cached")]
    np.testing.assert_array_equal(np.asarray(free[1]), np.asarray(free[0]))
    done = [jaxar.sample(long_model, variables, key, 6, known=known, known_mask=known_mask,
                         method=m, **kwargs) for m in ("naive", "cached")]
    np.testing.assert_array_equal(np.asarray(done[1]), np.asarray(done[0]))
    np.testing.assert_array_equal(np.asarray(done[0])[known_mask], np.asarray(known)[known_mask])
    assert not np.array_equal(np.asarray(done[0]), np.asarray(free[0]))


def test_sampler_matches_likelihood(conditional):
    """Chi-square of 20,000 queued samples (label 1, one cond) against p(x) of all 1,024 x;
    the same samples must fail against the distribution of another label."""
    model, variables = conditional
    n = 20_000
    cond = random_cond(6, 1, 5)
    samples = jaxar.sample(model, variables, jax.random.key(10), n,
                           labels=jnp.ones(n, jnp.int32), cond=jnp.broadcast_to(cond, (n, 5, 1)))
    x = all_inputs(model.event_shape, 2)
    index = input_index(np.asarray(samples), 2)
    for label, fits in ((1, True), (2, False)):
        probs = np.exp(joint_log_probs(model, variables, x, label, cond))
        stat, dof = chi_square_statistic(index, probs)
        assert (stat < scipy.stats.chi2.ppf(0.999, dof)) == fits, (label, stat, dof)


def test_lowres_condition_is_window_means():
    x = jnp.array([[0, 1, 1, 1, 0, 0, 1, 1]])
    cond = wavenet.lowres_condition(x, 2, (2, 2))  # 2 frames of 4 samples, 2 means each
    np.testing.assert_allclose(np.asarray(cond), [[[0.0, 1.0], [-1.0, 1.0]]])
    assert wavenet.WaveNet((8,), 2, cond_shape=(2, 2)).derive_cond(x).shape == (
        1, 2, 2)


@pytest.mark.parametrize("overrides, shape, match", [
    ({"ordering": "zigzag"}, (16,), r"model\.ordering"),
    ({"cond_shape": (3, 1)}, (16,), r"model\.cond_shape"),
    ({"num_stacks": 0}, (16,), r"model\.num_stacks"),
    ({"likelihood": "dmol"}, (16,), r"model\.likelihood"),
    ({}, (4, 4, 1), r"data\.shape"),
])
def test_bad_config_raises(overrides, shape, match):
    with pytest.raises(ValueError, match=match):
        jaxar.build_model(tiny_config("wavenet", shape, 2, **overrides))


def test_bad_inputs_raise_before_compiling(conditional):
    model, variables = conditional
    x = jnp.zeros((2, 10), jnp.int32)
    with pytest.raises(ValueError, match="cond is required"):
        jaxar.log_prob(model, variables, x, jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="cond must have shape"):
        jaxar.log_prob(model, variables, x, jnp.zeros(2, jnp.int32), random_cond(0, 2, 4))
    with pytest.raises(ValueError, match="labels are required"):
        jaxar.sample(model, variables, jax.random.key(0), 2, cond=random_cond(0, 2, 5))


def test_smoke_config_trains_and_draws_image_grids(tmp_path):
    cfg = jaxar.load_config("experiments/wavenet_mnist.py:smoke")
    jaxar.train_and_evaluate(cfg, str(tmp_path))
    rows = reporting.read_metrics(tmp_path)
    assert [r["step"] for r in rows if "train/bpd" in r] == [2, 4, 6]
    eval_bpd = [r["eval/bpd"] for r in rows if "eval/bpd" in r]
    assert len(eval_bpd) == 2 and all(0.5 < b < 1.5 for b in eval_bpd)
    from PIL import Image  # noqa: PLC0415

    # 4 samples of 36 shown as 6x6 images: a 2x2 grid with 1-pixel borders, scaled 4x.
    with Image.open(tmp_path / "samples_6.png") as image:
        assert image.size == ((2 * 7 + 1) * 4, (2 * 7 + 1) * 4)


def test_causal_conv_sees_now_and_one_dilation_back_and_steps_alike():
    conv = wavenet.CausalConv1D(features=3, dilation=2)
    h = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 2)), jnp.float32)
    with rng_context():
        variables = jax.jit(conv.init)(jax.random.key(0), h)
    full = lambda h: conv.apply(variables, h)[0].sum(-1)  # [L]
    seen = np.abs(np.asarray(jax.jit(jax.jacobian(full))(h))[:, 0].sum(-1)) > 0  # [t, s]
    t, s = np.indices((8, 8))
    np.testing.assert_array_equal(seen, (s == t) | (s == t - 2))
    past_BLC = jnp.pad(h, ((0, 0), (2, 0), (0, 0)))[:, :8]
    steps = jax.vmap(lambda h_BC, past_BC: conv.apply(variables, h_BC, past_BC, method=conv.step),
                     in_axes=1, out_axes=1)
    np.testing.assert_allclose(steps(h, past_BLC), jax.jit(conv.apply)(variables, h), atol=1e-6)

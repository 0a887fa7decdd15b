"""Every registered model, ordering and conditioning mode is a normalized autoregressive
distribution whose samplers agree: one table, run for each family in `REGISTRY`.

Per case: the probabilities of every input of a tiny event space sum to 1 (per label,
with the conditioning map); perturbing a dimension moves no earlier conditional; the
cached decoder's parameters at every call equal a full forward pass; every method draws
exactly the naive samples (with labels, cond, temperature and completion; fixed_point in
at most one pass per dimension), and their frequencies agree with the likelihood
(chi-square). Family-specific checks stay in the family's tests.
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import weightnorm_checks
from model_checks import (
    all_inputs,
    check_causal_perturbation,
    chi_square_statistic,
    decoder_call_params,
    input_index,
    joint_log_probs,
    tiny_config,
)

import jaxar
from jaxar import models
from jaxar.models import base
from jaxar.sampling import loop

PIX = dict(features=6, num_layers=2, head_features=6, input_kernel_size=3)
GATED = dict(features=6, num_layers=2, head_features=6, kernel_size=3, input_kernel_size=3)
PP = dict(features=4, num_resnets=1, num_resolutions=2, num_mixtures=2)
SNAIL = dict(features=4, num_blocks=2, num_resnets=1, key_features=4, value_features=4,
             num_mixtures=2, dropout_rate=0.0)
# A prior over codes: one categorical per pixel (num_mixtures is not read).
SNAIL_CODES = dict({k: v for k, v in SNAIL.items() if k != "num_mixtures"},
                   likelihood="categorical", embedding_features=3)
WAVE = dict(residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
            dilations=(1, 2, 4))
TRANSFORMER = dict(features=8, num_heads=2, num_layers=2)

# (id, model name, event shape, levels, model settings): every family, every ordering and
# conditioning mode it supports, and every likelihood, on event spaces small enough to
# enumerate. A case may combine several of them (PixelSNAIL's zigzag ordering is checked
# with the code-map conditioning and the categorical likelihood): each compiles six programs.
CASES = [
    ("made", "made", (3, 3, 1), 2, dict(hidden=(16, 16))),
    ("made-random-class", "made", (2, 2, 1), 4,
     dict(hidden=(16,), ordering="random", num_masks=3, num_classes=3)),
    ("made-rgb-categorical", "made", (1, 2, 3), 3, dict(hidden=(16,), likelihood="categorical")),
    ("made-zigzag", "made", (2, 3, 1), 2, dict(hidden=(16,), ordering="zigzag")),
    ("made-custom-rgb", "made", (1, 2, 2), 2,
     dict(hidden=(16,), ordering="custom", pixel_order=(1, 0))),
    ("pixelcnn-bernoulli", "pixelcnn", (3, 3, 1), 2, dict(PIX, likelihood="bernoulli")),
    ("pixelcnn-4lev-class", "pixelcnn", (2, 2, 1), 4, dict(PIX, num_classes=2)),
    ("pixelcnn-rgb-class", "pixelcnn", (2, 2, 3), 2, dict(PIX, num_classes=2)),
    ("pixelcnn-plain", "pixelcnn", (3, 3, 1), 2,
     dict(PIX, architecture="plain", likelihood="bernoulli")),
    ("gated", "gated_pixelcnn", (3, 3, 1), 2, dict(GATED, likelihood="bernoulli")),
    ("gated-rgb-class", "gated_pixelcnn", (2, 2, 3), 2, dict(GATED, num_classes=2)),
    ("gated-spatial", "gated_pixelcnn", (2, 4, 1), 2, dict(GATED, cond_shape=(1, 2, 1))),
    ("gated-codes-cond", "gated_pixelcnn", (2, 2, 1), 8,
     dict(GATED, cond_shape=(1, 1, 1), cond_levels=3, cond_features=3)),
    ("pixelcnn_pp-rgb", "pixelcnn_pp", (2, 2, 3), 2, PP),
    ("pixelcnn_pp-class", "pixelcnn_pp", (2, 2, 1), 4, dict(PP, num_classes=2)),
    ("pixelsnail-rgb-class", "pixelsnail", (2, 2, 3), 2, dict(SNAIL, num_classes=2)),
    ("pixelsnail-custom", "pixelsnail", (2, 2, 2), 2,
     dict(SNAIL, ordering="custom", pixel_order=(3, 0, 2, 1))),
    ("pixelsnail-random", "pixelsnail", (2, 3, 1), 2, dict(SNAIL, ordering="random",
                                                           ordering_seed=4)),
    # Priors over VQ-VAE codes: categorical over K codes, conditioned on coarser codes.
    ("pixelsnail-codes-cond-class", "pixelsnail", (2, 2, 1), 8,
     dict(SNAIL_CODES, cond_shape=(1, 1, 1), cond_levels=3, cond_features=3, num_classes=2)),
    ("pixelsnail-zigzag-codes-cond", "pixelsnail", (3, 3, 1), 2,
     dict(SNAIL_CODES, ordering="zigzag", cond_shape=(1, 3, 1), cond_levels=4,
          cond_features=3)),
    ("wavenet", "wavenet", (8,), 2, WAVE),
    ("wavenet-class-local", "wavenet", (10,), 2, dict(WAVE, num_classes=3, cond_shape=(5, 1))),
    ("transformer-class", "transformer", (3, 3, 1), 2, dict(TRANSFORMER, num_classes=3)),
    ("transformer-zigzag-sinusoidal", "transformer", (3, 3, 1), 2,
     dict(TRANSFORMER, ordering="zigzag", position="sinusoidal")),
    ("transformer-random-sequence", "transformer", (6,), 4,
     dict(TRANSFORMER, ordering="random")),
    ("transformer-custom-rgb", "transformer", (2, 2, 2), 2,
     dict(TRANSFORMER, ordering="custom", pixel_order=(2, 0, 3, 1))),
]
BATCH = 6
# test_every_method_draws_the_same_samples' batch, at which naive and fixed_point cost
# little beside their compilation. The chi-square test draws its samples with the cached
# decoder (every method draws the same samples) in calls of this batch: the program the
# methods test compiles on the same worker, instead of one more for a batch of thousands.
METHODS_BATCH = 64
NUM_SAMPLES = 63 * METHODS_BATCH


def test_every_registered_model_is_in_the_table():
    autoregressive = {name for name, cls in models.REGISTRY.items() if cls.autoregressive}
    assert {case[1] for case in CASES} == autoregressive


# All of a case's tests run on one worker, which builds its model and variables once
# (tests/conftest.py: scope_of).
@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    _, name, shape, levels, kwargs = request.param
    cfg = tiny_config(name, shape, levels, **kwargs)
    model = jaxar.build_model(cfg)
    # Conditioning and labels are made on the host (any values serve): an eager jax op
    # compiles a program of its own per shape.
    cond, rng = None, np.random.default_rng(3)
    if model.cond_levels:  # integer codes, which the data serves
        cond = rng.integers(0, model.cond_levels, (1, *model.cond_shape)).astype(np.int32)
    elif model.cond_shape:
        cond = rng.standard_normal((1, *model.cond_shape)).astype(np.float32)
    # Normalization, causality and sampler agreement hold for any parameters: random ones
    # drawn on the host compile no init (seconds for the weight-normalized models).
    return model, weightnorm_checks.random_variables(model), cond


def _batch(model, cond, n, seed=0):
    """Labels (every class in turn) and the conditioning map for n samples."""
    labels = None
    if model.num_classes:
        labels = np.arange(n, dtype=np.int32) % model.num_classes
    cond_n = None if cond is None else np.broadcast_to(cond, (n, *cond.shape[1:]))
    return labels, cond_n


def test_probabilities_of_all_inputs_sum_to_one(case):
    model, variables, cond = case
    x_all = all_inputs(model.event_shape, model.num_levels)
    per_label = []
    for label in range(model.num_classes) if model.num_classes else [None]:
        per_label.append(joint_log_probs(model, variables, x_all, label, cond))
        assert np.exp(per_label[-1]).sum() == pytest.approx(1.0, abs=1e-4), label
    if model.num_classes:  # and the label moves the distribution
        assert not np.allclose(per_label[0], per_label[1])


def test_no_dimension_sees_a_later_one(case):
    """Perturbed from every input of the event space (the normalization's batch shape:
    one compiled forward pass serves both)."""
    model, variables, cond = case
    rng = np.random.default_rng(0)
    x = all_inputs(model.event_shape, model.num_levels)
    labels, cond_n = _batch(model, cond, x.shape[0])
    changed = check_causal_perturbation(model, variables, x, rng, trials=6, labels=labels,
                                        cond=cond_n)
    assert changed > 0  # a model whose outputs never move would prove nothing


def test_samples_match_likelihood(case):
    """Sample frequencies over every input agree with exp(log_prob) (chi-square; drawn by
    the cached decoder, whose samples are every method's)."""
    model, variables, cond = case
    label = model.num_classes - 1 if model.num_classes else None
    x_all = all_inputs(model.event_shape, model.num_levels)
    probs = np.exp(joint_log_probs(model, variables, x_all, label, cond))
    n = METHODS_BATCH
    labels = None if label is None else np.full((n,), label, np.int32)
    _, cond_n = _batch(model, cond, n)
    xs = np.concatenate([
        jaxar.sample(model, variables, jax.random.fold_in(jax.random.key(7), i), n,
                     labels=labels, cond=cond_n, method="cached")
        for i in range(NUM_SAMPLES // n)])
    stat, dof = chi_square_statistic(input_index(xs, model.num_levels), probs)
    # 99.9% quantile of chi-square: dof + 3.1 sqrt(2 dof) + 10 is a safe upper bound.
    assert stat < dof + 3.1 * np.sqrt(2 * dof) + 10, (stat, dof)


def test_decoder_parameters_equal_a_full_forward_pass(case):
    model, variables, cond = case
    x = np.random.default_rng(2).integers(0, model.num_levels, (BATCH, *model.event_shape))
    x = jnp.asarray(x, jnp.int32)
    labels, cond_n = _batch(model, cond, BATCH)
    # Jitted (eager: seconds per model), then indexed on the host (`params_at` reads
    # shapes and slices only; an eager slice compiles a program per dimension).
    full = np.asarray(jax.jit(model.apply)(variables, x, labels, cond_n))
    decoder = model.decoder(variables, labels, cond_n, BATCH)
    got = decoder_call_params(decoder, x)
    order = base.generation_order(model)
    for s in range(got.shape[0]):
        want = loop.params_at(model, full, int(order[s * decoder.dims_per_step]))
        np.testing.assert_allclose(got[s], want, rtol=1e-4, atol=1e-4,
                                   err_msg=f"call {s}")


def test_every_method_draws_the_same_samples(case, caplog):
    """Free rows (nothing known) and completion rows in one batch: one compiled program per
    method serves both; fixed_point's logged pass count lies in [1, D]."""
    model, variables, cond = case
    labels, cond_n = _batch(model, cond, METHODS_BATCH)
    rng = np.random.default_rng(1)
    shape = (METHODS_BATCH, *model.event_shape)
    known = rng.integers(0, model.num_levels, shape).astype(np.int32)
    mask = rng.random(shape) < 0.4
    mask[::2] = False  # every other sample is drawn freely
    kwargs = dict(labels=labels, cond=cond_n, temperature=0.8, known=known, known_mask=mask)
    caplog.set_level(logging.INFO, logger="jaxar.sampling")
    draws = {
        method: np.asarray(jaxar.sample(model, variables, jax.random.key(5), METHODS_BATCH,
                                        method=method, **kwargs))
        for method in ("naive", "cached", "fixed_point", "auto")
    }
    for method in ("cached", "fixed_point", "auto"):
        np.testing.assert_array_equal(draws[method], draws["naive"], err_msg=method)
    np.testing.assert_array_equal(draws["naive"][mask], known[mask])
    assert 0 <= draws["naive"].min() and draws["naive"].max() < model.num_levels
    (passes,) = [int(m) for m in re.findall(r"fixed_point: (\d+) network passes", caplog.text)]
    assert 1 <= passes <= int(np.prod(model.event_shape))

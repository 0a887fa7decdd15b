"""PixelSNAIL: orderings, normalization, causality, attention, init, dropout, TFDS training."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import (
    check_causal_perturbation,
    tiny_config,
    total_probability,
)
from weightnorm_checks import (
    check_init_statistics,
    dropout_outputs,
    random_variables,
    weight_norm_outputs,
)

import jaxar
from jaxar.models import common, pixelsnail

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import attention as attention_benchmark  # noqa: E402

TINY = dict(features=4, num_blocks=1, num_resnets=1, key_features=4, value_features=4,
            num_heads=2, num_mixtures=2)
# Flat pixel indices of a 4x4 image in generation order: any permutation works.
CUSTOM_4x4 = (5, 0, 15, 3, 8, 12, 1, 10, 6, 14, 2, 9, 4, 13, 11, 7)


def test_orderings_give_sub_pixel_steps():
    steps = pixelsnail.pixel_steps("zigzag", 3, 3)
    np.testing.assert_array_equal(steps, [[0, 1, 5], [2, 4, 6], [3, 7, 8]])
    cfg = tiny_config("pixelsnail", (3, 3, 2), 4, **TINY, ordering="zigzag")
    order = jaxar.ordering(jaxar.build_model(cfg))
    assert order.shape == (3, 3, 2)
    np.testing.assert_array_equal(order[..., 0], 2 * steps)
    np.testing.assert_array_equal(order[..., 1], 2 * steps + 1)
    custom = pixelsnail.pixel_steps("custom", 4, 4, CUSTOM_4x4)
    np.testing.assert_array_equal(np.argsort(custom.ravel()), CUSTOM_4x4)


def test_attention_sees_exactly_the_earlier_pixels():
    """Gradients of the attention output at each pixel w.r.t. keys and values."""
    steps = pixelsnail.pixel_steps("custom", 4, 4, CUSTOM_4x4)
    q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 4, 4, 4))
    out = lambda k, v: pixelsnail.causal_attention(q, k, v, steps, 2)[0].sum(-1)
    # [4, 4 (output), 1, 4, 4, 4 (input)]; jitted (op by op: a program per op)
    jac_k, jac_v = jax.jit(jax.jacrev(out, (0, 1)))(k, v)
    seen = (np.abs(np.asarray(jac_k)) + np.abs(np.asarray(jac_v))).sum((2, 5)) > 0
    for i, j in np.ndindex(4, 4):
        np.testing.assert_array_equal(seen[i, j], steps < steps[i, j], err_msg=f"{i, j}")


def test_shift_in_order_passes_the_previous_pixel():
    steps = pixelsnail.pixel_steps("zigzag", 3, 3)
    x = jnp.arange(9.0).reshape(1, 3, 3, 1) + 1
    shifted = np.asarray(pixelsnail.shift_in_order(x, steps))[0, ..., 0]
    by_step = np.argsort(steps.ravel())
    for t in range(9):
        want = 0 if t == 0 else by_step[t - 1] + 1
        assert shifted.ravel()[by_step[t]] == want


# 2x2x3 raster (with labels), 3x3 zigzag and 2x2 custom orders: tests/test_protocol.py; here a
# custom order on a 4x4 map, where no pixel's context is a raster prefix.
CASES = [("custom", 0)]


@pytest.mark.parametrize("ordering,num_classes", CASES, ids=[f"{o}-{c}cls" for o, c in CASES])
def test_normalized_for_every_ordering_and_label(ordering, num_classes):
    pixel_order = CUSTOM_4x4 if ordering == "custom" else ()
    cfg = tiny_config("pixelsnail", (4, 4, 1), 2, **TINY, ordering=ordering,
                      pixel_order=pixel_order, num_classes=num_classes)
    model = jaxar.build_model(cfg)
    variables = random_variables(model, seed=len(ordering))
    for label in range(num_classes) if num_classes else [None]:
        assert total_probability(model, variables, label) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("ordering", ["raster", "zigzag", "custom"])
def test_perturbation_causality_per_sub_pixel(ordering):
    rng = np.random.default_rng(0)
    pixel_order = tuple(rng.permutation(64).tolist()) if ordering == "custom" else ()
    cfg = tiny_config("pixelsnail", (8, 8, 3), 256, **TINY, ordering=ordering,
                      pixel_order=pixel_order)
    model = jaxar.build_model(cfg)
    variables = random_variables(model, seed=5)
    x = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.int32)
    assert check_causal_perturbation(model, variables, x, rng, trials=10) > 0


def test_data_dependent_init_normalizes_every_layer_and_dropout_is_off_in_eval():
    cfg = tiny_config("pixelsnail", (4, 4, 3), 256, **TINY, num_classes=3)
    model = jaxar.build_model(cfg)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, 256, (16, 4, 4, 3)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    variables = jaxar.init_variables(model, cfg, jax.random.key(0), x, labels)
    assert check_init_statistics(weight_norm_outputs(model, variables, x, labels)) > 12

    with common.rng_context():
        eval0, eval1, train0, train1 = dropout_outputs(model, variables, x[:2], labels[:2])
    np.testing.assert_array_equal(eval0, eval1)
    assert not np.allclose(train0, train1)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("ordering", "spiral", "model.ordering must be one of"),
        ("pixel_order", (0, 1, 2), "model.pixel_order is read only"),
        ("num_heads", 3, "divisible by model.num_heads"),
        ("nonlinearity", "relu", "model.nonlinearity"),
    ],
)
def test_config_errors(key, value, match):
    with pytest.raises(ValueError, match=match):
        jaxar.build_model(tiny_config("pixelsnail", (4, 4, 3), 256, **{**TINY, key: value}))
    with pytest.raises(ValueError, match="permutation of range"):
        jaxar.build_model(tiny_config("pixelsnail", (2, 2, 3), 256, **TINY, ordering="custom",
                                      pixel_order=(0, 1, 1, 2)))


CODES = dict(TINY, likelihood="categorical", num_mixtures=None, cond_shape=(2, 2, 1),
             cond_levels=3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(likelihood="bernoulli"), r"model\.likelihood must be one of \['dmol', 'categ"),
        (dict(embedding_features=8), r"model\.embedding_features is not read with .*'dmol'"),
        (dict(CODES, num_mixtures=2), r"model\.num_mixtures is not read with .*'categorical'"),
        (dict(CODES, cond_levels=0), r"set both \(cond_levels > 0\) or neither"),
        (dict(TINY, cond_levels=3), r"set both \(cond_levels > 0\) or neither"),
        (dict(CODES, cond_shape=(3, 2, 1)), r"model\.cond_shape must be \(h, w, 1\) with h"),
        (dict(CODES, cond_shape=(2, 2, 2)), r"model\.cond_shape must be \(h, w, 1\)"),
        (dict(TINY, cond_features=4), r"model\.cond_features is read only with"),
    ],
)
def test_code_prior_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxar.build_model(tiny_config("pixelsnail", (4, 4, 1), 8, **{**TINY, **kwargs}))
    with pytest.raises(ValueError, match=r"one code per pixel: data\.shape needs 1 channel"):
        jaxar.build_model(tiny_config("pixelsnail", (4, 4, 3), 8, **CODES))


@pytest.mark.parametrize("name,kwargs", [
    ("pixelsnail", CODES),
    ("gated_pixelcnn", dict(features=4, num_layers=1, head_features=4, kernel_size=3,
                            input_kernel_size=3, cond_shape=(2, 2, 1), cond_levels=3)),
])
def test_code_cond_is_checked_and_read(name, kwargs):
    """`cond` must be int codes in [0, cond_levels); each code moves the log-probs of its
    block of the image (and may move others: the cond network sees the whole map); the
    model stays causal on a 4x4 map (the embedding keeps a channel of ones, so the up-left
    stream's zero padding stays apart from code 0; tests/test_protocol.py: 2x2 and 3x3)."""
    model = jaxar.build_model(tiny_config(name, (4, 4, 1), 8, **kwargs))
    x = np.random.default_rng(0).integers(0, 8, (2, 4, 4, 1)).astype(np.int32)
    codes = np.zeros((2, 2, 2, 1), np.int32)
    cases = [(None, r"cond is required: an int map of codes in \[0, 3\)"),
             (codes.astype(np.float32), r"cond must be an integer array of codes in \[0, 3\)"),
             (codes + 3, r"cond values must lie in \[0, 3\) .*got min 3, max 3"),
             (codes[:1], r"cond must have shape \[batch, \*\(2, 2, 1\)\]")]
    for cond, match in cases:
        with pytest.raises(ValueError, match=match):
            jaxar.log_prob(model, {}, x, cond=cond)
    assert model.derive_cond(x) is None  # the data serves the codes
    variables = random_variables(model, seed=1)
    base = np.asarray(jaxar.log_prob(model, variables, x, cond=codes))
    for i, j in np.ndindex(2, 2):
        moved = codes.copy()
        moved[:, i, j] = 2
        lp = np.asarray(jaxar.log_prob(model, variables, x, cond=moved))
        block = (slice(None), slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2))
        assert np.all(np.abs(lp - base)[block] > 1e-6), (i, j)
    rng = np.random.default_rng(1)
    cond = rng.integers(0, 3, codes.shape).astype(np.int32)
    assert check_causal_perturbation(model, variables, x, rng, trials=10, cond=cond) > 0
    params = jax.eval_shape(model.apply, variables, x, None, codes)
    assert params.shape[:4] == (2, 4, 4, 1)  # the protocol's [B, H, W, C, F]


def test_smoke_config_trains_and_samples(tmp_path):
    """What `python -m jaxar.cli.train --config experiments/pixelsnail_cifar10.py:smoke` runs."""
    cfg = jaxar.load_config(str(ROOT / "experiments" / "pixelsnail_cifar10.py:smoke"))
    state = jaxar.train_and_evaluate(cfg, tmp_path)
    assert int(state.step) == cfg.train.num_steps
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bpd = [r["train/bpd"] for r in rows if "train/bpd" in r]
    evals = [r["eval/bpd"] for r in rows if "eval/bpd" in r]
    assert len(bpd) == 3 and len(evals) == 2 and np.isfinite(bpd + evals).all()
    assert (tmp_path / f"samples_{cfg.train.num_steps}.png").is_file()


@pytest.mark.parametrize("ordering", ["raster", "zigzag", "custom"])
def test_blocked_attention_equals_the_full_masked_softmax(ordering, monkeypatch):
    """Query blocks of 16 over 7x9 pixels (4 blocks, the last ragged), values and
    gradients, against the full masked softmax it replaced (benchmarks/attention.py);
    a query block must not see keys generated at or after its queries."""
    monkeypatch.setattr(pixelsnail, "QUERY_BLOCK", 16)
    order = tuple(np.random.default_rng(3).permutation(63).tolist())
    steps = pixelsnail.pixel_steps(ordering, 7, 9, order if ordering == "custom" else ())
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 7, 9, f)).astype(np.float32) for f in (6, 6, 4))
    # Jitted (QUERY_BLOCK is read when traced, here): op by op, each op would compile a
    # program of its own.
    blocked, full = (jax.jit(lambda q, k, v, f=f: f(q, k, v, steps, 2))
                     for f in (pixelsnail.causal_attention, attention_benchmark.masked_attention))
    got = blocked(q, k, v)
    np.testing.assert_allclose(got, full(q, k, v), rtol=1e-5, atol=1e-6)
    ct = rng.normal(size=got.shape).astype(np.float32)
    grads = [jax.jit(jax.grad(lambda q, k, v, f=f: jnp.vdot(f(q, k, v), ct), argnums=(0, 1, 2)))(
             q, k, v) for f in (blocked, full)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Changing the keys and values of the last pixel generated changes no output.
    last = np.unravel_index(int(np.argmax(steps)), steps.shape)
    k2, v2 = k.copy(), v.copy()
    k2[:, last[0], last[1]] += 5.0
    v2[:, last[0], last[1]] += 5.0
    np.testing.assert_array_equal(blocked(q, k2, v2), got)

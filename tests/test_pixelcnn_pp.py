"""PixelCNN++: shifted layers, normalization, causality, data-dependent init, dropout, CLI."""

import json
import pathlib
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import (
    check_causal_perturbation,
    output_gradient,
    tiny_config,
)
from PIL import Image
from weightnorm_checks import (
    check_init_statistics,
    dropout_outputs,
    random_variables,
    weight_norm_outputs,
)

import jaxar
from jaxar.models import common
from jaxar.nn import shifted_layers as sl

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(features=4, num_resnets=1, num_resolutions=2, num_mixtures=2)


SHIFTED = [
    # (layer, output pixel, input pixels it may see: (rows, cols) as predicates)
    ("down", lambda: sl.down_shifted_conv(2), (3, 3), lambda i, j: i <= 3),
    ("down_right", lambda: sl.down_right_shifted_conv(2), (3, 3), lambda i, j: (i <= 3) & (j <= 3)),
    ("down_stride2", lambda: sl.down_shifted_conv(2, strides=2), (1, 2), lambda i, j: i <= 2),
    ("down_right_stride2", lambda: sl.down_right_shifted_conv(2, strides=2), (1, 2),
     lambda i, j: (i <= 2) & (j <= 4)),
    ("down_transpose", lambda: sl.down_shifted_conv_transpose(2), (5, 3), lambda i, j: 2 * i <= 5),
    ("down_right_transpose", lambda: sl.down_right_shifted_conv_transpose(2), (5, 3),
     lambda i, j: (2 * i <= 5) & (2 * j <= 3)),
]


@pytest.mark.parametrize("name,make,out,allowed", SHIFTED, ids=[s[0] for s in SHIFTED])
def test_shifted_layers_see_only_what_their_docstrings_say(name, make, out, allowed):
    x = jax.random.normal(jax.random.key(1), (1, 6, 6, 2))
    grad = output_gradient(make(), x, (0, *out))
    seen = np.abs(grad).sum(-1)[0] > 0
    rows, cols = np.indices(seen.shape)
    assert not seen[~allowed(rows, cols)].any(), seen.astype(int)
    assert seen.any()


def test_up_left_stream_sees_only_earlier_pixels():
    x = jax.random.normal(jax.random.key(1), (1, 5, 5, 2))
    module = _UpLeft()
    for i, j in [(0, 0), (2, 3), (4, 0)]:
        seen = np.abs(output_gradient(module, x, (0, i, j))).sum(-1)[0] > 0
        flat = np.flatnonzero(seen.ravel())
        assert (flat < i * 5 + j).all(), (i, j, seen.astype(int))
        assert (i, j) == (0, 0) or flat.size


class _UpLeft(nn.Module):
    @nn.compact
    def __call__(self, x):
        return sl.up_left_stream(x, 3)


# Normalization (per label, and labels moving the distribution) and chi-square on 2x2
# images: tests/test_protocol.py.


@pytest.fixture(scope="module")
def rgb256():
    """Three resolutions (8, 4, 2) on 8x8 RGB images of 256 levels, class-conditional."""
    cfg = tiny_config("pixelcnn_pp", (8, 8, 3), 256, **dict(TINY, num_resolutions=3),
                      num_classes=3)
    return cfg, jaxar.build_model(cfg)


def test_perturbation_causality_per_sub_pixel(rgb256):
    _, model = rgb256
    variables = random_variables(model, seed=2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.int32)
    labels = np.array([0, 2], np.int32)
    assert check_causal_perturbation(model, variables, x, rng, trials=10, labels=labels) > 0


def test_data_dependent_init_normalizes_every_layer_and_dropout_is_off_in_eval():
    cfg = tiny_config("pixelcnn_pp", (4, 4, 3), 256, **TINY, num_classes=3)
    model = jaxar.build_model(cfg)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, 256, (16, 4, 4, 3)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    variables = jaxar.init_variables(model, cfg, jax.random.key(0), x, labels)
    # Every conv and 1x1 layer: 3 or 4 per gated resnet, the strided ones, first and last.
    assert check_init_statistics(weight_norm_outputs(model, variables, x, labels)) > 30

    with common.rng_context():
        eval0, eval1, train0, train1 = dropout_outputs(model, variables, x[:2], labels[:2])
    np.testing.assert_array_equal(eval0, eval1)
    assert not np.allclose(train0, train1)
    assert not np.allclose(train0, eval0)


def test_apply_checks_stored_weight_shapes_without_tracing_their_initializer(monkeypatch):
    calls, draw = [], sl.direction_init
    counted = lambda *args: calls.append(args[1]) or draw(*args)
    monkeypatch.setattr(sl, "direction_init", counted)
    layer, x = sl.down_right_shifted_conv(3), jnp.ones((1, 4, 4, 2))
    variables = layer.init(jax.random.key(0), x)
    assert calls == [(2, 2, 2, 3)]
    layer.apply(variables, x)
    assert len(calls) == 1  # the stored v is used; only its shape is checked
    with pytest.raises(flax.errors.ScopeParamShapeError, match=r"\(2, 2, 5, 3\)"):
        layer.apply(variables, jnp.ones((1, 4, 4, 5)))


def test_concat_elu_is_elu_of_x_and_minus_x_bit_for_bit_with_its_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32) * np.float32(3.0)
    x[0, 0, :] = [0.0, -0.0, 1e-30, -1e-30, np.inf]
    x[1, 0, :] = [-np.inf, np.nan, 80.0, -80.0, 1e-7]
    x = jnp.asarray(x)
    reference = lambda v: jax.nn.elu(jnp.concatenate([v, -v], axis=-1))
    got, want = jax.jit(sl.concat_elu)(x), jax.jit(reference)(x)
    # Zeros keep their sign. A NaN's sign bit is not specified by IEEE 754 for arithmetic
    # results, and XLA versions differ in it (jaxlib 0.12 at backend optimization level 0
    # gives elu(-NaN) the other sign), so NaNs are compared as NaNs only.
    both_nan = np.isnan(got) & np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got)[~both_nan], np.signbit(want)[~both_nan])
    np.testing.assert_array_equal(got, want)
    cotangent = jnp.asarray(rng.standard_normal(got.shape).astype(np.float32))
    grad = lambda f: jax.jit(jax.vjp(f, x)[1])(cotangent)[0]
    np.testing.assert_array_equal(grad(sl.concat_elu), grad(reference))


def test_config_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        jaxar.build_model(tiny_config("pixelcnn_pp", (6, 6, 3), 256, num_resolutions=3))
    with pytest.raises(ValueError, match="must be 'dmol'"):
        jaxar.build_model(tiny_config("pixelcnn_pp", (4, 4, 3), 256, likelihood="categorical"))
    with pytest.raises(ValueError, match="dropout_rate"):
        jaxar.build_model(tiny_config("pixelcnn_pp", (4, 4, 3), 256, dropout_rate=1.0))


def test_cli_smoke_trains_and_samples(tmp_path):
    """The one subprocess run: `python -m jaxar.cli.train` on the smoke config."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxar.cli.train",
           "--config", str(ROOT / "experiments" / "pixelcnn_pp_cifar10.py:smoke"),
           "--workdir", str(workdir)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    bpd = [r["train/bpd"] for r in rows if "train/bpd" in r]
    evals = [r["eval/bpd"] for r in rows if "eval/bpd" in r]
    assert len(bpd) == 3 and len(evals) == 2 and all(np.isfinite(bpd + evals))
    grid = np.asarray(Image.open(workdir / "samples_6.png"))
    assert grid.ndim == 3 and grid.shape[-1] == 3  # RGB samples


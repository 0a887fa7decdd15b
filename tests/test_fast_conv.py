"""The fast convolutions (`jaxar.nn.fast_conv`) compute what the plain masked ones do.

Each layer is built with conv_impl="plain", "im2col" and "split" on the same variables;
outputs and gradients (w.r.t. every parameter and the input) must agree to float
tolerance, and the parameter trees must be identical (checkpoints do not depend
on the implementation).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import weightnorm_checks
from model_checks import tiny_config

import jaxar
from jaxar import models as models_lib
from jaxar.nn import fast_conv, layers

# The per-layer comparisons compile at XLA's default backend optimization (level 2), the
# rounding users run, not at the suite's level 0 (tests/conftest.py): the summation order
# of a reduction, hence its last bits, depends on it, and a one-element bias gradient (a
# sum of terms that cancel) differs by 2.1e-5 at level 0. The whole-model comparison
# (`test_shifted_models_im2col_equal_plain`) holds at both levels.
DEFAULT_OPTIMIZATION = {"xla_backend_optimization_level": 2}


def assert_same_function(make, x, *args):
    """`make(impl)` builds a layer; compares the fast implementations to plain on x (and args)."""
    for impl in ("im2col", "split"):
        compare_to_plain(make, impl, x, *args)


def compare_to_plain(make, impl, x, *args, wrt_input=True):
    """Outputs and gradients (w.r.t. the parameters, and x unless `wrt_input=False`)."""
    plain, fast = make("plain"), make(impl)
    shapes = jax.eval_shape(plain.init, jax.random.key(0), x, *args)
    fast_shapes = jax.eval_shape(fast.init, jax.random.key(0), x, *args)
    assert fast_shapes == shapes
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)

    def value_and_grads(module):
        def loss(variables, x):
            y = module.apply(variables, x, *args)
            return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

        def run(variables, x):
            argnums = (0, 1) if wrt_input else 0
            (_, y), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(variables, x)
            return y, grads

        compiled = jax.jit(run).lower(variables, x).compile(DEFAULT_OPTIMIZATION)
        return compiled(variables, x)

    want = value_and_grads(plain)
    got = value_and_grads(fast)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(np.max(np.abs(w))) + 1e-6
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(w) / scale, atol=2e-5)
    assert float(np.max(np.abs(want[0]))) > 0.1  # not trivially zero


def image(channels, batch=3, height=6, width=7, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, height, width, channels)),
                       jnp.float32)


@pytest.mark.parametrize(
    "kernel,mask_type,dilation,groups,features_in,features,out_blocks",
    [
        (1, "B", 1, 3, 6, 6, 2),
        (3, "A", 1, 1, 1, 4, 1),
        (3, "B", 2, 1, 4, 4, 1),
        (5, "A", 1, 3, 3, 6, 1),
        (5, "B", 2, 3, 6, 12, 2),
        (7, "B", 1, 1, 4, 3, 1),
        (7, "A", 3, 3, 3, 6, 1),
        (7, "B", 1, 1, 8, 1, 1),  # few outputs: the output-side forward
        (3, "A", 2, 3, 12, 3, 1),
    ],
)
def test_masked_conv_im2col_equals_plain(kernel, mask_type, dilation, groups, features_in,
                                         features, out_blocks):
    def make(impl):
        return layers.MaskedConv2D(features, kernel, mask_type, dilation, num_groups=groups,
                                   out_blocks=out_blocks, conv_impl=impl)

    assert_same_function(make, image(features_in))


def test_batch_chunks_with_a_padded_last_chunk():
    """Patches of 2 images per chunk: 3 images -> 2 chunks, the last one padded."""
    def make(impl):
        return layers.MaskedConv2D(5, 5, "B", 2, conv_impl=impl)

    per_image = 6 * 7 * 13 * 4 * 4  # positions * live taps (5x5 type B) * features * bytes
    assert fast_conv._chunk_size(3, (6, 7), 13 * 4, 4, limit=2 * per_image) == 2
    with fast_conv.chunk_bytes(2 * per_image):
        assert fast_conv._chunk_size(3, (6, 7), 13 * 4, 4) == 2
        assert_same_function(make, image(4))
    assert fast_conv._chunk_size(3, (6, 7), 13 * 4, 4) == 3  # the default limit again


@pytest.mark.parametrize("impl", ["im2col", "split"])
def test_mask_without_live_taps_gives_zeros(impl):
    """A 1x1 type-A mask with one group masks every weight: zeros, as plain gives."""
    x = image(3)
    layer = layers.MaskedConv2D(4, 1, "A", use_bias=False, conv_impl=impl)
    variables = layer.init(jax.random.key(0), x)
    out = layer.apply(variables, x)
    assert out.shape == (3, 6, 7, 4) and not np.any(np.asarray(out))
    kernel_grad = jax.grad(lambda v: jnp.sum(layer.apply(v, x)))(variables)["params"]["kernel"]
    assert not np.any(np.asarray(kernel_grad))


@pytest.mark.parametrize("features_in,features", [(1, 6), (6, 6), (8, 2)])
def test_weight_gradient_without_input_gradient(features_in, features):
    """A data input needs no dx: dW from the patches of x (fewer input features) or from
    the gathered dy (the output-side forward included), with dx never computed."""
    def make(impl):
        return layers.MaskedConv2D(features, 5, "A", conv_impl=impl)

    compare_to_plain(make, "im2col", image(features_in), wrt_input=False)


def test_vertical_stack_im2col_equals_plain():
    assert_same_function(lambda impl: layers.VerticalStackConv(4, 5, impl), image(3))


@pytest.mark.parametrize(
    "kernel,mask_type,groups,out_blocks", [(3, "A", 1, 1), (5, "B", 1, 1), (5, "B", 3, 2)]
)
def test_horizontal_stack_im2col_equals_plain(kernel, mask_type, groups, out_blocks):
    def make(impl):
        return layers.HorizontalStackConv(6, kernel, mask_type, groups, out_blocks=out_blocks,
                                          conv_impl=impl)

    assert_same_function(make, image(3))


def test_gated_activation_spatial_conditioning_im2col_equals_plain():
    cond = image(2, seed=1)
    assert_same_function(lambda impl: layers.GatedActivation(impl), image(8), None, cond)


@pytest.mark.parametrize(
    "name,model",
    [
        ("pixelcnn_pp", dict(features=8, num_resnets=1, num_mixtures=2, num_resolutions=1,
                             num_classes=2)),
        ("pixelsnail", dict(features=8, num_blocks=1, num_resnets=1, key_features=4,
                            value_features=4, num_mixtures=2, num_classes=2)),
    ],
)
def test_shifted_models_im2col_equal_plain(name, model):
    """PixelCNN++ / PixelSNAIL with conv_impl="im2col" (stride-1 shifted convolutions):
    the same log-likelihood and parameter gradients as plain, for the same parameters
    (random ones: data-dependent init only takes statistics of these same layers' outputs).
    One PixelCNN++ resolution holds every stride-1 layer kind; the strided and transposed
    ones run as XLA's convolution whatever conv_impl says (`shifted_layers.WNConv`)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 16, (4, 4, 4, 3)), jnp.int32)
    labels = jnp.asarray([0, 1, 1, 0])
    results = []
    for impl in ("plain", "im2col"):
        cfg = tiny_config(name, (4, 4, 3), 16, conv_impl=impl, dropout_rate=0.0, **model)
        net = jaxar.build_model(cfg)
        assert net.conv_impl == impl
        variables = weightnorm_checks.random_variables(net, seed=0)

        def loss(params, net=net, variables=variables):
            lp = models_lib.apply_log_prob(net, {**variables, "params": params}, x, labels)
            return -jnp.mean(lp)

        results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    for got, want in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0]), strict=True):
        scale = float(np.max(np.abs(want))) + 1e-6
        np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=2e-5)
    assert jax.tree.structure(results[1]) == jax.tree.structure(results[0])


def test_tap_rectangles():
    mask_b = [(r - 3, c - 3) for r in range(4) for c in range(7) if r < 3 or c <= 3]
    rects = fast_conv.tap_rectangles(tuple(mask_b))
    assert [r[:5] for r in rects] == [(-3, -3, 3, 7, 1), (0, -3, 1, 4, 1)]
    assert [mask_b[t] for t in rects[1][5]] == [(0, -3), (0, -2), (0, -1), (0, 0)]
    dilated = ((-4, -4), (-4, -2), (-4, 0), (-4, 2), (-4, 4), (0, -4), (0, -2), (0, 0))
    assert [r[:5] for r in fast_conv.tap_rectangles(dilated)] == [(-4, -4, 1, 5, 2),
                                                                 (0, -4, 1, 3, 2)]
    assert fast_conv.tap_rectangles(((0, 0), (0, 1), (0, 3))) is None  # a gap in the row


def test_auto_picks_im2col_on_cpu_and_bad_impl_raises():
    assert fast_conv.resolve_impl("auto") == "im2col"  # the tests run on CPU
    assert fast_conv.resolve_impl("auto", masked=True) == "im2col"
    assert fast_conv.resolve_impl("split", masked=True) == "split"
    assert fast_conv.resolve_impl("split") == "im2col"  # unmasked: the auto rule
    assert fast_conv.resolve_impl("plain") == "plain"
    for avx512, shifted_auto in [(True, "plain"), (False, "im2col")]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fast_conv, "cpu_has_avx512", lambda has=avx512: has)
            assert fast_conv.resolve_impl("auto", shifted=True) == shifted_auto
            assert fast_conv.resolve_impl("auto") == "im2col"
            assert fast_conv.resolve_impl("im2col", shifted=True) == "im2col"
    for name, shape in [("pixelcnn", (4, 4, 1)), ("gated_pixelcnn", (4, 4, 1)),
                        ("pixelcnn_pp", (4, 4, 3)), ("pixelsnail", (4, 4, 3))]:
        cfg = tiny_config(name, shape, 2, conv_impl="fast")
        with pytest.raises(ValueError, match="model.conv_impl must be one of"):
            jaxar.build_model(cfg)


def test_im2col_rejects_what_it_does_not_implement():
    x, kernel = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(NotImplementedError, match="stride 1"):
        fast_conv._conv_general_dilated("im2col", x, kernel, (2, 2), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

"""Each layer's docstring claim about what its outputs can NOT see, proved with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors as flax_errors
from flax.core import scope as flax_scope
from model_checks import output_gradient, tiny_config

import jaxar
from jaxar.nn import layers

H, W = 5, 6


def dependence(module, x, i, j, out_feature):
    """|d out[0, i, j, out_feature] / d x[0]| > 0 as a boolean [H, W, C_in] map."""
    return np.abs(output_gradient(module, x, (0, i, j, out_feature), param_shift=0.5)[0]) > 0


def raster_before(i, j):
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    return (rows < i) | ((rows == i) & (cols < j))


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("dilation", [1, 2])
def test_masked_conv_single_channel(mask_type, dilation):
    x = jnp.ones((1, H, W, 1))
    conv = layers.MaskedConv2D(2, 3, mask_type, dilation)
    for i, j in [(2, 3), (0, 0), (4, 5)]:
        dep = dependence(conv, x, i, j, 0)[..., 0]
        allowed = raster_before(i, j)
        allowed[i, j] = mask_type == "B"
        assert not np.any(dep & ~allowed), f"sees a later pixel at {(i, j)}"
    # Positive control: the kernel reaches (dilated) neighbours above and to the left.
    dep = dependence(conv, x, 2, 3, 0)[..., 0]
    assert dep[2 - dilation, 3] and dep[2, 3 - dilation] and dep[2, 3] == (mask_type == "B")


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_channel_groups(mask_type):
    """RGB: output group o sees current-pixel input group g only if g < o (A) / g <= o (B)."""
    x = jnp.ones((1, H, W, 3))
    conv = layers.MaskedConv2D(6, 3, mask_type, num_groups=3)
    for out_feature in range(6):
        o = out_feature * 3 // 6
        dep = dependence(conv, x, 2, 2, out_feature)
        for g in range(3):
            visible = g < o or (mask_type == "B" and g == o)
            assert dep[2, 2, g] == visible
            assert not dep[3:, :, g].any() and not dep[2, 3:, g].any()
            assert dep[1, 2, g]  # the pixel above is fully visible


def test_group_ids_blocks():
    np.testing.assert_array_equal(layers.group_ids(6, 3), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(layers.group_ids(6, 3, blocks=2), [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="features=5"):
        layers.group_ids(5, 3)


def test_vertical_stack_sees_no_row_below_and_down_shift_none_of_its_row():
    x = jnp.ones((1, H, W, 1))
    conv = layers.VerticalStackConv(2, 3)
    dep = dependence(conv, x, 2, 3, 0)[..., 0]
    assert not dep[3:].any()
    assert dep[2, 2:5].all() and dep[1, 2:5].all()  # its row and the one above, k wide

    class Shifted(layers.VerticalStackConv):
        def __call__(self, x):
            return layers.down_shift(super().__call__(x))

    dep = dependence(Shifted(2, 3), x, 2, 3, 0)[..., 0]
    assert not dep[2:].any() and dep[1, 3]


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("groups", [1, 3])
def test_horizontal_stack(mask_type, groups):
    x = jnp.ones((1, H, W, groups))
    conv = layers.HorizontalStackConv(2 * groups, 5, mask_type, groups)
    for out_feature in range(2 * groups):
        o = out_feature * groups // (2 * groups)
        dep = dependence(conv, x, 2, 3, out_feature)
        other_rows = np.delete(dep, 2, axis=0)
        assert not other_rows.any() and not dep[2, 4:].any()
        assert dep[2, 1:3].all()  # two columns to the left, every group
        for g in range(groups):
            assert dep[2, 3, g] == (g < o or (mask_type == "B" and g == o))


def test_masked_dense_follows_mask():
    mask = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
    dense = layers.MaskedDense(3)
    x = jnp.ones((1, 2))
    variables = jax.tree.map(lambda p: p + 0.5, dense.init(jax.random.key(0), x, mask))
    jac = jax.jacobian(lambda x: dense.apply(variables, x, mask)[0])(x)[:, 0, :]
    np.testing.assert_array_equal(np.abs(np.asarray(jac)) > 0, mask.T > 0)


def test_gated_activation_values_and_conditioning():
    x = jnp.array([[[[0.5, -1.0, 2.0, 0.0]]]])
    out = layers.GatedActivation().apply({}, x)
    expected = np.tanh([0.5, -1.0]) * (1 / (1 + np.exp(-np.array([2.0, 0.0]))))
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], expected, rtol=1e-6)
    h = jnp.ones((1, 3))
    gate = layers.GatedActivation()
    variables = gate.init(jax.random.key(0), x, h)
    assert not np.allclose(gate.apply(variables, x, h), out)  # the class bias is used


def test_existing_parameters_are_read_without_tracing_their_initializers(monkeypatch):
    """`layers.param` reads a parameter that exists and checks its shape itself: an apply
    of a weight-normalized model makes no call to flax's `param` (a `jax.eval_shape` of
    the initializer per parameter), and a parameter of the wrong shape is still refused
    with flax's error naming it."""
    model = jaxar.build_model(tiny_config("pixelcnn_pp", (4, 4, 3), 8, features=4,
                                          num_resnets=1, num_resolutions=2, num_mixtures=2))
    variables = jaxar.models.common.abstract_variables(model)
    x = jax.ShapeDtypeStruct((2, 4, 4, 3), np.int32)
    flax_params, flax_param = [], flax_scope.Scope.param

    def counted(scope, name, *args, **kwargs):
        flax_params.append(name)
        return flax_param(scope, name, *args, **kwargs)

    monkeypatch.setattr(flax_scope.Scope, "param", counted)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, 4, 4, model.likelihood.num_params()) and flax_params == []
    kernel = variables["params"]["down0_u_res0"]["conv_in"]["v"]
    wrong = jax.ShapeDtypeStruct((*kernel.shape[:-1], kernel.shape[-1] + 1), kernel.dtype)
    bad = jax.tree_util.tree_map_with_path(
        lambda path, leaf: wrong if leaf is kernel else leaf, variables)
    with pytest.raises(flax_errors.ScopeParamShapeError,
                       match=r'"v" in "/down0_u_res0/conv_in"'):
        jax.eval_shape(model.apply, bad, x)

"""benchmarks/profile_step.py: each op of a traced step lands in the group of what it does."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.nn import shifted_layers as sl

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from benchmarks import profile_step  # noqa: E402


def _step(w, x):
    def loss(w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(sl.concat_elu(y) ** 2)

    return jax.value_and_grad(loss)(w)


def test_ops_are_grouped_by_kind_direction_and_source(tmp_path):
    w = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 4, 8)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 4)), jnp.float32)
    compiled = jax.jit(_step).lower(w, x).compile()
    instructions = profile_step.parse_hlo(compiled.as_text())
    groups = {profile_step.group_of(info) for info in instructions.values()}
    assert {"convolution", "concat_elu / elu"} <= groups
    convs = [i for i in instructions.values() if "convolution" in i["kinds"]]
    assert len(convs) >= 2  # the forward one and the kernel's gradient
    assert [i["function"] for i in convs if i["function"]] == ["_step.<locals>.loss"]
    elu = [i for i in instructions.values() if i["function"] == "concat_elu"]
    assert elu and all(i["file"].endswith("shifted_layers.py") for i in elu)
    with jax.profiler.trace(str(tmp_path)):
        jax.block_until_ready(compiled(w, x))
    times = profile_step.op_times(str(tmp_path), instructions)
    assert times and all(s > 0 for s in times.values())
    assert set(times) <= set(instructions)


def test_a_transposed_convolution_is_its_own_group():
    x = jnp.ones((1, 4, 4, 2), jnp.float32)
    w = jnp.ones((2, 3, 2, 5), jnp.float32)
    up = lambda x, w: jax.lax.conv_general_dilated(  # stride-2 upsampling, as PixelCNN++'s
        x, w, (1, 1), ((1, 1), (1, 2)), lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    plain = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    for fn, group in ((up, "transposed convolution"), (plain, "convolution")):
        text = jax.jit(fn).lower(x, w).compile().as_text()
        groups = {profile_step.group_of(i) for i in profile_step.parse_hlo(text).values()}
        assert group in groups
        assert ({"transposed convolution", "convolution"} - {group}).isdisjoint(groups)

"""The cached decoders of PixelCNN++ and PixelSNAIL (raster, zigzag and custom orderings; a
categorical prior over codes conditioned on coarser codes) at sizes beyond the protocol's: per-call
parameters are those of a full forward pass, PixelCNN++'s draw exactly what method="naive"
draws, and a decoding step runs every layer of its model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import weightnorm_checks
from flax import linen as nn
from flax import traverse_util
from model_checks import decoder_call_params, tiny_config

import jaxar
from jaxar.models import base
from jaxar.sampling import loop

PP = dict(features=8, num_resnets=1, num_mixtures=2)
SNAIL = dict(
    features=8,
    num_blocks=2,
    num_resnets=1,
    key_features=4,
    value_features=4,
    num_heads=2,
    num_mixtures=2,
)
CUSTOM_3x5 = tuple(np.random.default_rng(7).permutation(15).tolist())
# (id, name, event shape, levels, model kwargs, temperature)
CASES = [
    (
        "pp-3res-class",
        "pixelcnn_pp",
        (8, 8, 3),
        16,
        dict(PP, num_resolutions=3, num_classes=3),
        1.0,
    ),
    (
        "pp-2res-2resnets",
        "pixelcnn_pp",
        (4, 6, 3),
        32,
        dict(PP, num_resolutions=2, num_resnets=2),
        0.8,
    ),
    (
        "snail-elu-class",
        "pixelsnail",
        (3, 5, 3),
        16,
        dict(SNAIL, nonlinearity="elu", num_classes=2),
        1.3,
    ),
    (
        "snail-zigzag-class",
        "pixelsnail",
        (3, 5, 3),
        16,
        dict(SNAIL, ordering="zigzag", num_classes=2),
        1.0,
    ),
    (
        "snail-custom-2resnets",
        "pixelsnail",
        (3, 5, 3),
        16,
        dict(SNAIL, ordering="custom", pixel_order=CUSTOM_3x5, num_resnets=2),
        0.9,
    ),
    (
        "snail-codes-cond",
        "pixelsnail",
        (4, 6, 1),
        16,
        dict(SNAIL, likelihood="categorical", num_mixtures=None, cond_shape=(2, 3, 1),
             cond_levels=5, num_classes=2),
        1.0,
    ),
]
BATCH = 4


def _build(name, shape, levels, kwargs):
    cfg = tiny_config(name, shape, levels, **kwargs)
    model = jaxar.build_model(cfg)
    # Random weights straight into the parameter tree (no data-dependent init compile).
    variables = weightnorm_checks.random_variables(model, scale=0.3)
    labels = None
    if model.num_classes:
        rng = np.random.default_rng(1)
        labels = jnp.asarray(rng.integers(0, model.num_classes, BATCH), jnp.int32)
    return model, variables, labels


def _codes(model, batch):
    """A code map `cond` for models conditioned on integer codes (else None)."""
    if not model.cond_levels:
        return None
    return jnp.arange(batch * np.prod(model.cond_shape)).reshape(batch, *model.cond_shape) \
        % model.cond_levels


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    _, name, shape, levels, kwargs, temperature = request.param
    return (*_build(name, shape, levels, kwargs), temperature)


# PixelCNN++ at two resnets per stage (the other cases' per-call parameters are checked
# below, and every model's decoder and the one sampling loop draw naive's samples in
# tests/test_protocol.py): the geometry whose decoder only this test runs.
@pytest.mark.parametrize("case", CASES[1:2], ids=lambda c: c[0], indirect=True)
def test_cached_samples_equal_naive_samples(case):
    """Free rows (nothing known) and completion rows in one batch: one program per method."""
    model, variables, labels, temperature = case
    rng = np.random.default_rng(1)
    known = rng.integers(0, model.num_levels, (BATCH, *model.event_shape)).astype(np.int32)
    known_mask = rng.random(known.shape) < 0.4
    known_mask[: BATCH // 2] = False  # the first half is drawn freely
    kwargs = dict(labels=labels, cond=_codes(model, BATCH), temperature=temperature,
                  known=known, known_mask=known_mask)
    draws = {method: np.asarray(jaxar.sample(model, variables, jax.random.key(5), BATCH,
                                             method=method, **kwargs))
             for method in ("naive", "cached", "auto")}
    np.testing.assert_array_equal(draws["cached"], draws["naive"])
    np.testing.assert_array_equal(draws["auto"], draws["naive"])
    assert len(np.unique(draws["naive"][: BATCH // 2])) > 2  # not a degenerate model
    np.testing.assert_array_equal(draws["naive"][known_mask], known[known_mask])


@pytest.mark.parametrize("case", [CASES[0], *CASES[2:]], ids=lambda c: c[0],
                         indirect=True)
def test_cached_call_parameters_equal_a_full_forward_pass(case):
    """Run the decoder over a fixed complete image, call by call, as the sampler does."""
    model, variables, labels, _ = case
    x = np.random.default_rng(2).integers(0, model.num_levels, (BATCH, *model.event_shape))
    x = jnp.asarray(x, jnp.int32)
    cond = _codes(model, BATCH)
    full = np.asarray(jax.jit(model.apply)(variables, x, labels, cond))  # [B, H, W, F]
    decoder = model.decoder(variables, labels, cond, BATCH)
    got = decoder_call_params(decoder, x)  # [calls, B, F]
    order = base.generation_order(model)
    assert got.shape[0] * decoder.dims_per_step == order.shape[0]
    for s in range(got.shape[0]):
        dim = int(order[s * decoder.dims_per_step])
        np.testing.assert_allclose(
            got[s], loop.params_at(model, full, dim), atol=1e-5, rtol=1e-5,
            err_msg=f"call {s} (dimension {dim})",
        )


READ_CASES = [
    ("pixelcnn_pp", dict(PP, num_resolutions=3, num_classes=2)),
    ("pixelcnn_pp", dict(PP, num_resolutions=2, num_resnets=3)),
    ("pixelcnn_pp", dict(PP, num_resolutions=1)),
    ("pixelsnail", dict(SNAIL, num_blocks=3, num_classes=2)),
    ("pixelsnail", dict(SNAIL, ordering="zigzag", num_resnets=2)),
    ("pixelsnail", dict(SNAIL, ordering="custom", pixel_order=tuple(range(16))[::-1],
                        num_classes=3)),
    ("pixelsnail", dict(SNAIL, likelihood="categorical", num_mixtures=None, num_classes=2,
                        cond_shape=(2, 1, 1), cond_levels=5)),
    ("pixelsnail", dict(SNAIL, likelihood="categorical", num_mixtures=None, ordering="zigzag",
                        cond_shape=(4, 4, 1), cond_levels=3)),
]


@pytest.mark.parametrize("name,kwargs", READ_CASES, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(READ_CASES)])
def test_decoder_reads_every_parameter(name, kwargs):
    """A decoding step runs every layer of the model (PixelCNN++: the first step of a row,
    then a pixel): a layer it skipped would leave its parameters unused, and fail here."""
    channels = 1 if kwargs.get("likelihood") == "categorical" else 3
    model, variables, labels = _build(name, (4, 4, channels), 16, kwargs)
    called = set()

    def record(next_fun, args, kwargs, context):
        called.add(tuple(context.module.scope.path))
        return next_fun(*args, **kwargs)

    def trace():
        decoder = model.decoder(variables, labels, _codes(model, BATCH), BATCH)
        x_flat = jnp.zeros((BATCH, 16 * channels), jnp.int32)
        with nn.intercept_methods(record):
            cache = decoder.cache
            if decoder.start_block is not None:
                cache = decoder.start_block(cache, x_flat, 0)
            return decoder.step(cache, x_flat, 1)

    jax.eval_shape(trace)
    names = model.layer_names()
    # The conditioning network runs once, on the whole code map, before the first step.
    skipped = {names["cond"]} if "cond" in names else set()
    owners = {tuple(path[:-1]) for path in traverse_util.flatten_dict(variables["params"])}
    missing = {owner for owner in owners if owner not in called and owner[0] not in skipped}
    assert not missing, sorted(missing)
    flat = jax.tree.leaves(names)
    assert len(set(flat)) == len(flat) and set(flat) == set(variables["params"])

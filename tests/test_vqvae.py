"""The VQ-VAE: straight-through quantization, the EMA codebook against hand-computed
numbers, dead-code restarts, and the model's protocol methods, training and config checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_checks import tiny_config

import jaxar
from jaxar.models import vqvae
from jaxar.training import precision

TINY = dict(features=8, residual_features=4, num_residual_layers=1, code_features=4, num_codes=8)

# K=3 codes in D=2, and a batch of 4 vectors (one example, a 2x2 map): vectors 0 and 3
# are nearest code 0, vectors 1 and 2 code 1; code 2 gets none.
CODEBOOK_KD = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], np.float32)
Z_ND = np.array([[0.1, 0.0], [0.9, 1.1], [1.1, 0.9], [0.2, -0.1]], np.float32)
CODES_N = np.array([0, 1, 1, 0])


def state(codebook_KD=CODEBOOK_KD):
    return {"batch_stats": {"ema_count": jnp.ones(3), "ema_sum": jnp.asarray(codebook_KD),
                            "codebook": jnp.asarray(codebook_KD)}}


def quantize(variables, z_BhwD, train, rng=None, **kwargs):
    """One quantizer call with K=3, D=2; returns (outputs, batch_stats after it)."""
    quantizer = vqvae.VectorQuantizer(num_codes=3, code_features=2, **kwargs)
    out, updates = quantizer.apply(variables, z_BhwD, train, rng, mutable=["batch_stats"])
    return out, updates["batch_stats"]


def hand_ema_update(decay=0.5, epsilon=0.1):
    """The EMA step of K=3 codes on Z_ND from count 1 and sum = CODEBOOK_KD, by hand."""
    count = decay * np.ones(3) + (1 - decay) * np.array([2.0, 2.0, 0.0])
    summed = decay * CODEBOOK_KD + (1 - decay) * np.array(
        [Z_ND[0] + Z_ND[3], Z_ND[1] + Z_ND[2], [0.0, 0.0]])
    n = count.sum()  # 3.5 at decay 0.5
    smoothed = (count + epsilon) / (n + 3 * epsilon) * n
    return count, summed, summed / smoothed[:, None]


def test_quantizer_gradients_go_straight_through_and_never_reach_the_codebook():
    z_BhwD = jnp.asarray(Z_ND.reshape(1, 2, 2, 2))
    w = jnp.asarray(np.random.default_rng(0).normal(size=z_BhwD.shape), jnp.float32)

    def objective(z, batch_stats):
        out, _ = quantize({"batch_stats": batch_stats}, z, train=False)
        return jnp.sum(out.quantized * w), out

    grad_z, grad_stats = jax.grad(lambda z, s: objective(z, s)[0], argnums=(0, 1))(
        z_BhwD, state()["batch_stats"])
    np.testing.assert_array_equal(grad_z, w)
    assert all(not np.any(g) for g in jax.tree.leaves(grad_stats))
    commit_grad = jax.grad(lambda s: quantize({"batch_stats": s}, z_BhwD, False)[0]
                           .commitment.sum())(state()["batch_stats"])
    assert all(not np.any(g) for g in jax.tree.leaves(commit_grad))
    _, out = objective(z_BhwD, state()["batch_stats"])
    np.testing.assert_array_equal(out.codes, CODES_N.reshape(1, 2, 2))
    np.testing.assert_allclose(out.quantized, CODEBOOK_KD[CODES_N].reshape(1, 2, 2, 2), atol=1e-6)
    q = CODEBOOK_KD[CODES_N]
    np.testing.assert_allclose(out.commitment, [np.mean((Z_ND - q) ** 2)], rtol=1e-6)
    np.testing.assert_allclose(out.histogram, [[0.5, 0.5, 0.0]])
    variables = vqvae.VectorQuantizer(3, 2).init(jax.random.key(0), z_BhwD, False)
    assert set(variables) == {"batch_stats"}  # nothing the optimizer could move
    stats = variables["batch_stats"]
    np.testing.assert_array_equal(stats["codebook"], stats["ema_sum"])
    np.testing.assert_array_equal(stats["ema_count"], np.ones(3))


def test_ema_update_matches_the_hand_computed_numbers_with_laplace_smoothing():
    z_BhwD = jnp.asarray(Z_ND.reshape(1, 2, 2, 2))
    out, stats = quantize(state(), z_BhwD, train=True, decay=0.5, epsilon=0.1,
                          restart_threshold=0.0)
    count, summed, codebook = hand_ema_update()
    np.testing.assert_allclose(stats["ema_count"], count, rtol=1e-6)
    np.testing.assert_allclose(stats["ema_sum"], summed, rtol=1e-6)
    np.testing.assert_allclose(stats["codebook"], codebook, rtol=1e-6)
    # Smoothing moves the codes off the plain mean sum / count:
    assert np.abs(codebook[2] - summed[2] / count[2]).max() > 0.4
    # The batch is quantized with the codebook it was given, not the updated one.
    np.testing.assert_allclose(out.quantized.reshape(4, 2), CODEBOOK_KD[CODES_N], atol=1e-6)
    _, unchanged = quantize(state(), z_BhwD, train=False, decay=0.5)
    np.testing.assert_array_equal(unchanged["codebook"], CODEBOOK_KD)


def test_dead_codes_restart_at_a_batch_vector_and_live_ones_are_untouched():
    z_BhwD = jnp.asarray(Z_ND.reshape(1, 2, 2, 2))
    count, summed, codebook = hand_ema_update()  # code 2's count falls to 0.5
    restarted_rows = set()
    for seed in range(4):
        _, stats = quantize(state(), z_BhwD, train=True, rng=jax.random.key(seed), decay=0.5,
                            epsilon=0.1, restart_threshold=1.0)
        row = stats["codebook"][2]
        assert any(np.array_equal(row, z) for z in Z_ND), row
        np.testing.assert_array_equal(stats["ema_sum"][2], row)
        assert stats["ema_count"][2] == 1.0
        restarted_rows.add(tuple(np.asarray(row).tolist()))
        # Codes 0 and 1 (count 1.5 >= 1) keep the plain EMA update.
        np.testing.assert_allclose(stats["ema_count"][:2], count[:2], rtol=1e-6)
        np.testing.assert_allclose(stats["ema_sum"][:2], summed[:2], rtol=1e-6)
        np.testing.assert_allclose(stats["codebook"][:2], codebook[:2], rtol=1e-6)
    assert len(restarted_rows) > 1  # the row is drawn with the key
    _, stats = quantize(state(), z_BhwD, train=True, rng=jax.random.key(0), decay=0.5,
                        epsilon=0.1, restart_threshold=0.6)  # 0.5 < 0.6: restarted
    assert any(np.array_equal(stats["codebook"][2], z) for z in Z_ND)
    _, stats = quantize(state(), z_BhwD, train=True, rng=jax.random.key(0), decay=0.5,
                        epsilon=0.1, restart_threshold=0.0)  # 0: never
    np.testing.assert_allclose(stats["codebook"], codebook, rtol=1e-6)
    with pytest.raises(ValueError, match="rng: VectorQuantizer needs a key"):
        quantize(state(), z_BhwD, train=True, decay=0.5)


def build(shape=(8, 8, 1), num_levels=4, **model):
    cfg = tiny_config("vqvae", shape, num_levels, **{**TINY, **model})
    return jaxar.build_model(cfg), cfg


@functools.cache
def tiny_model():
    model, cfg = build()
    variables = jaxar.init_variables(model, cfg, jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (4, 8, 8, 1), 0, 4)
    return model, variables, x


def test_encode_and_decode_shapes_and_values():
    model, cfg = build((28, 28, 1), 2, top_factor=4, bottom_factor=2)
    variables = jax.eval_shape(lambda: jaxar.init_variables(model, cfg, jax.random.key(0)))
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.int32)
    top, bottom = jax.eval_shape(functools.partial(model.apply, method=model.encode),
                                 variables, x)
    assert (top.shape, bottom.shape) == ((3, 7, 7), (3, 14, 14))
    assert top.dtype == bottom.dtype == jnp.int32
    image = jax.eval_shape(functools.partial(model.apply, method=model.decode_codes),
                           variables, top, bottom)
    assert image.shape == (3, 28, 28, 1)
    model, variables, x = tiny_model()
    # Jitted (op by op, each op would compile a program of its own).
    top, bottom = jax.jit(functools.partial(model.apply, method=model.encode))(variables, x)
    assert top.shape == (4, 2, 2) and bottom.shape == (4, 4, 4)
    assert 0 <= top.min() and top.max() < 8
    decode = jax.jit(functools.partial(model.apply, method=model.decode_codes))
    np.testing.assert_allclose(decode(variables, top, bottom), jax.jit(model.apply)(variables, x),
                               atol=1e-5)


def test_loss_and_summarize_values():
    model, variables, x = tiny_model()
    metrics = model.apply(variables, x, method=model.loss)
    assert {k: v.shape for k, v in metrics.items()} == {
        "loss": (4,), "mse": (4,), "code_hist_top": (4, 8), "code_hist_bottom": (4, 8)}
    assert all(v.dtype == jnp.float32 for v in metrics.values())
    recon = model.apply(variables, x)
    target = 2 * np.asarray(x) / 3 - 1
    np.testing.assert_allclose(metrics["mse"], ((recon - target) ** 2).mean((1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics["code_hist_top"].sum(-1), 1.0, rtol=1e-6)
    # loss - mse is commitment_cost times the commitment: doubling the cost doubles it.
    double = model.clone(commitment_cost=0.5).apply(variables, x, method=model.loss)
    commitment = metrics["loss"] - metrics["mse"]
    assert np.all(commitment > 0)
    np.testing.assert_allclose(double["loss"] - double["mse"], 2 * commitment, rtol=1e-5)
    means = {"loss": jnp.float32(0.05), "mse": jnp.float32(0.04),
             "code_hist_top": jnp.full(8, 1 / 8), "code_hist_bottom": jnp.array(
                 [0.5, 0.5, 0, 0, 0, 0, 0, 0])}
    summary = model.summarize(means)
    assert set(summary) == {"loss", "mse", "psnr", "perplexity_top", "code_usage_top",
                            "perplexity_bottom", "code_usage_bottom"}
    np.testing.assert_allclose(summary["psnr"], 20.0, rtol=1e-6)  # 10 log10(4 / 0.04)
    np.testing.assert_allclose(summary["perplexity_top"], 8.0, rtol=1e-6)
    np.testing.assert_allclose(summary["perplexity_bottom"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(summary["code_usage_top"], 1.0)
    np.testing.assert_allclose(summary["code_usage_bottom"], 0.25)
    key = jax.random.key(3)
    assert model.training_kwargs(key) == {"rng": key}


def test_training_updates_the_codebook_and_evaluation_does_not():
    model, variables, x = tiny_model()
    loss = functools.partial(model.apply, method=model.loss, mutable=["batch_stats"])
    _, updates = loss(variables, x, train=True, rng=jax.random.key(2))
    for level in ("top_quantizer", "bottom_quantizer"):
        before, after = variables["batch_stats"][level], updates["batch_stats"][level]
        assert np.abs(after["codebook"] - before["codebook"]).max() > 1e-3
        assert np.abs(after["ema_count"] - before["ema_count"]).max() > 1e-3
    _, updates = loss(variables, x, train=False)
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"],
                 variables["batch_stats"])
    _, updates = jax.jit(functools.partial(model.apply, mutable=["batch_stats"]),
                         static_argnames="train")(variables, x, train=True)
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"],
                 variables["batch_stats"])  # __call__ never updates


def test_bfloat16_compute_gives_float32_metrics_close_to_float32():
    model, variables, x = tiny_model()

    @jax.jit
    def metrics(variables):
        bf16 = {**variables, "params": precision.cast_floats(variables["params"], jnp.bfloat16)}
        with precision.compute_in(jnp.bfloat16):
            return model.apply(bf16, x, method=model.loss, train=True, rng=jax.random.key(0),
                               mutable=["batch_stats"])

    out, updates = metrics(variables)
    assert all(v.dtype == jnp.float32 for v in out.values())
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates))
    exact = model.apply(variables, x, method=model.loss)
    np.testing.assert_allclose(out["mse"], exact["mse"], rtol=0.05)


def test_adam_steps_on_a_fixed_batch_reduce_the_loss():
    model, variables, x = tiny_model()
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, batch_stats, opt_state, key):
        def objective(params):
            metrics, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, method=model.loss,
                train=True, mutable=["batch_stats"], **model.training_kwargs(key))
            return metrics["loss"].mean(), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for i in range(40):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                    jax.random.key(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses  # 0.54 measured


def test_reconstruct_levels_and_preview():
    model, variables, x = tiny_model()
    y = jnp.array([-2.0, -1.0, -0.4, 0.0, 0.3, 1.0, 1.7])  # 4 levels: (y + 1) * 1.5
    np.testing.assert_array_equal(model.reconstruct_levels(y), [0, 0, 1, 2, 2, 3, 3])
    assert model.reconstruct_levels(y).dtype == jnp.int32
    examples = {"x": np.asarray(x, np.uint8)}
    grid, cols = model.preview(variables, jax.random.key(0), 3, examples, sample=None)
    assert cols == 3 and grid.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(grid[:3], np.asarray(x)[:3])
    recon = model.reconstruct_levels(jax.jit(model.apply)(variables, x[:3]))
    np.testing.assert_array_equal(grid[3:], recon)
    grid, cols = model.preview(variables, jax.random.key(0), 16, examples, sample=None)
    assert cols == 4 and grid.shape == (8, 8, 8, 1)  # only 4 examples to show
    with pytest.raises(ValueError, match="not an autoregressive model"):
        jaxar.sample(model, variables, jax.random.key(0), 2)


@pytest.mark.parametrize("model_cfg,message", [
    (dict(top_factor=3), r"model\.top_factor must be a power of two >= 2 dividing"),
    (dict(top_factor=16), r"model\.top_factor must be a power of two >= 2 dividing the "
                          r"image size \(8, 8\), got 16"),
    (dict(bottom_factor=1), r"model\.bottom_factor must be a power of two >= 2"),
    (dict(bottom_factor=4, top_factor=4), r"model\.top_factor=4 must exceed "
                                          r"model\.bottom_factor=4"),
    (dict(decay=1.0), r"model\.decay must lie in \[0, 1\), got 1\.0"),
    (dict(commitment_cost=-0.1), r"model\.commitment_cost must be finite and >= 0"),
    (dict(restart_threshold=float("nan")), r"model\.restart_threshold must be finite"),
    (dict(epsilon=0.0), r"model\.epsilon must be finite and > 0"),
    (dict(num_codes=0), r"model\.num_codes must be >= 1"),
    (dict(featurs=8), r"unknown config key model\.featurs for model 'vqvae'; did you mean "
                      r"'features'\?"),
    (dict(num_classes=10), r"model\.num_classes must be 0"),
    (dict(ordering="zigzag"), r"vqvae only supports ordering 'raster'"),
])
def test_strict_config_errors(model_cfg, message):
    with pytest.raises(ValueError, match=message):
        build(**model_cfg)


def test_config_builds_every_field():
    model, _ = build((28, 28, 1), 2, top_factor=4, decay=0.9, num_classes=0,
                     ordering="raster")
    assert isinstance(model, vqvae.VQVAE) and model.decay == 0.9 and model.features == 8
    assert not model.autoregressive and model.loss_metric == "loss" and model.num_classes == 0

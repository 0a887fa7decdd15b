"""The original authors' released weights: fixtures written by the original PixelCNN++
and PixelSNAIL TensorFlow code (tests/data/original_checkpoints, README there) load into
jaxar exactly: same network output, same per-image log-likelihood, the averages."""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxar
from jaxar import config, data, models, tf_checkpoint
from jaxar.cli import evaluate as evaluate_cli
from jaxar.cli import import_weights
from jaxar.models import released
from jaxar.training import checkpoint, train

DATA = pathlib.Path(__file__).parent / "data" / "original_checkpoints"
REPO = pathlib.Path(__file__).resolve().parents[1]
# The fixtures' sizes (their meta.json), as overrides of the released configs.
FIXTURES = {
    "openai_pixelcnn_pp": ("experiments/pixelcnn_pp_cifar10.py:paper",
                           {"features": 8, "num_resnets": 2, "num_mixtures": 2}),
    "neocxi_pixelsnail": ("experiments/pixelsnail_cifar10.py:paper",
                          {"features": 16, "num_resnets": 2, "num_mixtures": 2,
                           "num_blocks": 2, "value_features": 8}),
}


def fixture_config(folder, **changes):
    spec, sizes = FIXTURES[folder]
    cfg = config.load_config(str(REPO / spec))
    cfg.data.shape = (8, 8, 3)
    cfg.model.update({**sizes, **changes})
    return cfg


@functools.cache
def imported(folder, file="params_cifar.ckpt", averages=True):
    cfg = fixture_config(folder)
    model = models.build_model(cfg)
    ckpt = tf_checkpoint.TFCheckpoint(DATA / folder / file)
    shapes = import_weights.abstract_params(model)
    params = released.load(ckpt, model.released_layers(), shapes, averages=averages)
    return model, {"params": jax.tree.map(jnp.asarray, params)}


def nll_nats(model, variables, x):
    lp = models.log_prob(model, variables, jnp.asarray(x, jnp.int32))
    return -np.asarray(lp).reshape(len(x), -1).sum(-1)


def param_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def original_pixelcnn_pp_count(f: int, nr: int, mix: int) -> int:
    """Trainable parameters of openai/pixel-cnn's `model_spec`, layer by layer (V, g, b of
    every weight-normalized layer; RGB input plus the channel of ones)."""
    conv = lambda kh, kw, cin, cout: kh * kw * cin * cout + 2 * cout
    total = conv(2, 3, 4, f) + conv(1, 3, 4, f) + conv(2, 1, 4, f)
    u_res = lambda aux: conv(2, 3, 2 * f, f) + conv(2, 3, 2 * f, 2 * f) + aux * conv(1, 1, 2 * f, f)
    ul_res = lambda aux_in: (conv(2, 2, 2 * f, f) + conv(2, 2, 2 * f, 2 * f)
                             + conv(1, 1, aux_in, f))
    total += 3 * nr * (u_res(False) + ul_res(2 * f))  # up: ul takes u
    total += 2 * (conv(2, 3, f, f) + conv(2, 2, f, f))  # stride-2 convolutions
    total += (nr + 2 * (nr + 1)) * (u_res(True) + ul_res(4 * f))  # down: ul takes [u, ul]
    total += 2 * (conv(2, 3, f, f) + conv(2, 2, f, f))  # transposed convolutions
    return total + conv(1, 1, f, 10 * mix)


def test_parameter_counts_equal_the_released_architectures():
    meta = json.loads((DATA / "openai_pixelcnn_pp" / "meta.json").read_text())
    assert original_pixelcnn_pp_count(8, 2, 2) == meta["num_trainable_params"] == 62584
    for folder in FIXTURES:
        model, variables = imported(folder)
        meta = json.loads((DATA / folder / "meta.json").read_text())
        assert param_count(variables) == meta["num_trainable_params"]
    counts = {}
    for spec in ("pixelcnn_pp_cifar10.py:paper", "pixelsnail_cifar10.py:paper"):
        cfg = config.load_config(str(REPO / "experiments" / spec))
        model = models.build_model(cfg)
        shapes = import_weights.abstract_params(model)
        counts[spec] = param_count(shapes)
        # The layer list covers every parameter of the paper model (3 per layer).
        assert len(model.released_layers()) * 3 == len(jax.tree.leaves(shapes))
    assert counts["pixelcnn_pp_cifar10.py:paper"] == original_pixelcnn_pp_count(160, 5, 10)
    assert counts["pixelcnn_pp_cifar10.py:paper"] == 53_659_080
    # The original graph's count (fixture README); 6 position channels, not 2.
    assert counts["pixelsnail_cifar10.py:paper"] == 46_180_788
    imagenet = config.load_config(str(REPO / "experiments/pixelsnail_cifar10.py:imagenet32"))
    assert (imagenet.model.num_mixtures, imagenet.model.dropout_rate) == (32, 0.0)


@pytest.mark.parametrize("folder", list(FIXTURES))
def test_imported_model_computes_what_the_original_computes(folder):
    ref = np.load(DATA / folder / "reference.npz")
    model, variables = imported(folder)
    order = np.asarray(released.original_dmol_order(model.num_mixtures))
    out = jax.jit(model.apply)(variables, jnp.asarray(ref["x"], jnp.int32))
    np.testing.assert_allclose(out, ref["out_ema"][..., order], rtol=0, atol=1e-4)
    nll = nll_nats(model, variables, ref["x"])
    np.testing.assert_allclose(nll, ref["nll_ema_nats"], rtol=1e-5)
    bpd = jaxar.bits_per_dim(model, variables, jnp.asarray(ref["x"], jnp.int32))
    np.testing.assert_allclose(bpd, ref["nll_ema_nats"] / (np.log(2) * 8 * 8 * 3), rtol=1e-5)
    # The averages are what is loaded: the raw weights give the raw references, which
    # differ from the averages' by far more than the tolerance.
    raw_model, raw = imported(folder, averages=False)
    np.testing.assert_allclose(nll_nats(raw_model, raw, ref["x"]), ref["nll_raw_nats"],
                               rtol=1e-5)
    assert np.abs(ref["nll_raw_nats"] / ref["nll_ema_nats"] - 1).max() > 1e-3
    # V1 and V2 files give identical parameters.
    _, from_v2 = imported(folder, "params_cifar_v2.ckpt")
    jax.tree.map(np.testing.assert_array_equal, variables, from_v2)


def test_samplers_agree_on_an_imported_model():
    """The cached decoder draws the full network's ancestral sample (fixed_point's, which
    is exactly naive's: tests/test_protocol.py) on the released architecture."""
    model, variables = imported("neocxi_pixelsnail")
    key = jax.random.PRNGKey(3)
    draws = {m: np.asarray(jaxar.sample(model, variables, key, 1, method=m))
             for m in ("cached", "fixed_point")}
    assert draws["cached"].shape == (1, 8, 8, 3) and draws["cached"].std() > 0
    np.testing.assert_array_equal(draws["cached"], draws["fixed_point"])


def test_another_architecture_is_refused_naming_the_tensor():
    ckpt = tf_checkpoint.TFCheckpoint(DATA / "openai_pixelcnn_pp" / "params_cifar.ckpt")
    model = models.build_model(fixture_config("openai_pixelcnn_pp", features=16))
    shapes = import_weights.abstract_params(model)
    with pytest.raises(ValueError, match=r"params_cifar.ckpt: tensor 'model/conv2d_0/V/"
                                         r"ExponentialMovingAverage' of shape \[2, 3, 4, 8\] "
                                         r"does not fit the config's layer u_in \(v of shape "
                                         r"\[2, 3, 4, 16\]\): a checkpoint of another"):
        released.check(ckpt, model.released_layers(), shapes)
    cfg = fixture_config("neocxi_pixelsnail", num_blocks=1)
    model = models.build_model(cfg)
    ckpt = tf_checkpoint.TFCheckpoint(DATA / "neocxi_pixelsnail" / "params_cifar_v2.ckpt")
    # One block fewer: the output layer is reached where the second block's layers are.
    with pytest.raises(ValueError, match=r"tensor 'model/dense_9/V/ExponentialMovingAverage' of "
                                         r"shape \[25, 25\] does not fit the config's layer "
                                         r"out \(v of shape \[16, 20\]\)"):
        released.check(ckpt, model.released_layers(), import_weights.abstract_params(model))
    cfg = fixture_config("neocxi_pixelsnail", background_per_channel=False)
    with pytest.raises(ValueError, match=r"differs in: background_per_channel"):
        models.build_model(cfg).released_layers()


def test_import_cli_refuses_bad_input_writing_nothing(tmp_path, capsys):
    ckpt = DATA / "openai_pixelcnn_pp" / "params_cifar.ckpt"
    cases = [
        (["openai-pixelcnn", str(ckpt)], r"source must be one of openai-pixelcnn-pp, "
                                         r"neocxi-pixelsnail, got 'openai-pixelcnn'"),
        (["openai-pixelcnn-pp", str(DATA / "openai_pixelcnn_pp" / "meta.json")],
         r"meta.json: no TensorFlow checkpoint table magic number"),
        # The released config (160 filters) does not fit the fixture's 8.
        (["openai-pixelcnn-pp", str(ckpt)], r"tensor 'model/conv2d_0/V/ExponentialMoving"
                                            r"Average' of shape \[2, 3, 4, 8\] does not fit"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            import_weights.main([*argv, "--workdir", str(tmp_path / "run")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("jaxar-import: error: ")
        assert re.search(message, err), err
        assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        import_weights.main(["openai-pixelcnn-pp", str(ckpt), "--workdir",
                             str(tmp_path / "full")])
    assert exit_info.value.code == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def fixture_config_file(folder, where: pathlib.Path) -> pathlib.Path:
    """A config file of the fixture's size (what a user's --config would be)."""
    config_file = where / "fixture_config.py"
    spec, sizes = FIXTURES[folder]
    config_file.write_text(
        "from jaxar.config import load_config\n"
        "def get_config(arg=None):\n"
        f"    cfg = load_config({str(REPO / spec)!r})\n"
        "    cfg.data.shape = (8, 8, 3)\n"
        f"    cfg.model.update({sizes!r})\n"
        "    return cfg\n")
    return config_file


def test_import_cli_end_to_end(tmp_path):
    folder = "neocxi_pixelsnail"
    config_file = fixture_config_file(folder, tmp_path)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.import_weights", "neocxi-pixelsnail",
         str(DATA / folder / "params_cifar_v2.ckpt"), "--workdir", str(workdir),
         "--config", str(config_file)],
        capture_output=True, text=True, cwd=tmp_path, env=os.environ, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported neocxi-pixelsnail (V2 checkpoint ")
    assert "24,746 parameters, the Polyak averages" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixture_config.py", "run"]
    cfg, model, variables, step = checkpoint.load_run(workdir)
    assert step == 0 and cfg.model.background_per_channel
    ref = np.load(DATA / folder / "reference.npz")
    np.testing.assert_allclose(nll_nats(model, variables, ref["x"]), ref["nll_ema_nats"],
                               rtol=1e-5)


def test_fine_tuning_an_imported_workdir_starts_from_the_imported_params(tmp_path):
    """jaxar-train on an imported workdir, on other data and another batch size, read by
    a grain worker process: the run starts from the imported params (its first step's
    loss is theirs) and reads its data from the start. (The PixelSNAIL fixture: its
    training step compiles in half the time of the PixelCNN++ one, whose import the
    jaxar-eval test below runs.)"""
    folder = "neocxi_pixelsnail"
    config_file = fixture_config_file(folder, tmp_path)
    workdir = tmp_path / "run"
    import_weights.import_weights("neocxi-pixelsnail", DATA / folder / "params_cifar.ckpt",
                                  workdir, str(config_file))
    # One batch is the whole training set: the first step's mean loss does not depend on
    # the order grain's shuffle reads it in. (6 examples: the shape log_prob was compiled
    # for by the tests above.)
    overrides = ["--config.data.source=synthetic", "--config.data.name=random",
                 "--config.data.num_train=6", "--config.data.num_test=2",
                 "--config.data.num_workers=1", "--config.train.batch_size=6",
                 "--config.train.num_steps=2", "--config.train.log_every_steps=1",
                 "--config.train.num_samples=0", "--config.eval.batch_size=2",
                 "--config.model.dropout_rate=0.0"]
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.train", "--config", str(config_file),
         "--workdir", str(workdir), *overrides],
        capture_output=True, text=True, cwd=tmp_path, env=os.environ, check=False)
    assert result.returncode == 0, result.stderr
    assert "resumed from the checkpoint at step 0" in result.stdout
    assert not list(workdir.glob("samples_*.png"))  # train.num_samples=0: no preview
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["step"] == 1 and "train/bpd" in r)
    cfg = checkpoint.read_run_config(workdir)  # the fine-tuning run's
    assert (cfg.data.source, cfg.train.batch_size) == ("synthetic", 6)
    train_split, _ = data.load_splits(cfg)
    x = jnp.asarray(train_split.get(np.arange(6))["x"], jnp.int32)
    model, variables = imported(folder)
    expected = float(np.mean(jaxar.bits_per_dim(model, variables, x)))
    np.testing.assert_allclose(first["train/bpd"], expected, rtol=1e-5)
    _, _, tuned, step = checkpoint.load_run(workdir, params="raw")
    assert step == 2
    assert float(np.mean(jaxar.bits_per_dim(model, tuned, x))) < expected
    # The import saved no data position (train.FRESH_DATA); the run's own checkpoint
    # holds grain's (the "data" item, JSON).
    position = lambda step: json.loads((workdir / "checkpoints" / step / "data" /
                                        "metadata").read_text())
    assert position("0") == train.FRESH_DATA
    assert set(position("2")) == {"grain"}


def test_eval_cli_reports_the_mean_bits_per_dim_of_the_fixture_images(tmp_path, capsys):
    """jaxar-eval on the fixture's images as PNG files: every image is in one of the image
    folder's two splits; together they score the original code's mean NLL."""
    folder = "openai_pixelcnn_pp"
    workdir = tmp_path / "run"
    import_weights.import_weights("openai-pixelcnn-pp", DATA / folder / "params_cifar.ckpt",
                                  workdir, str(fixture_config_file(folder, tmp_path)))
    ref = np.load(DATA / folder / "reference.npz")
    images = tmp_path / "images"
    images.mkdir()
    for k, image in enumerate(ref["x"]):
        Image.fromarray(image).save(images / f"{k}.png")
    found = {}
    for split in ("train", "test"):
        evaluate_cli.main(["--workdir", str(workdir), "--split", split, "--step", "0",
                           "--no_progress", "--out", str(tmp_path / f"{split}.json"),
                           "--config.data.source=folder", f"--config.data.path={images}"])
        out = capsys.readouterr().out
        assert re.search(r"step 0: \d examples, \d+\.\d{4} bits/dim", out), out
        found[split] = json.loads((tmp_path / f"{split}.json").read_text())
    counts = [found[s]["examples"] for s in ("train", "test")]
    assert sum(counts) == len(ref["x"]) and min(counts) >= 1
    mean_bpd = sum(found[s]["examples"] * found[s]["bits_per_dim"] for s in found) / sum(counts)
    expected = np.mean(ref["nll_ema_nats"]) / (np.log(2) * 8 * 8 * 3)
    np.testing.assert_allclose(mean_bpd, expected, rtol=1e-5)

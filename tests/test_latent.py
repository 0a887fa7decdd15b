"""The latent-prior pipeline end to end on smoke configs: a VQ-VAE, its code datasets
(encoded once per checkpoint), a top prior, a bottom prior conditioned on the top codes,
and images sampled and completed through them from the CLI and from Python."""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

import jaxar
from jaxar import data
from jaxar.cli import sample as sample_cli  # the tests call its functions
from jaxar.data import codes as codes_data
from jaxar.training import codes, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRIORS = str(ROOT / "experiments" / "latent_prior_mnist.py")


def _config(spec: str, **data_keys):
    cfg = jaxar.load_config(spec)
    cfg.data.update(data_keys)
    return cfg


def _two_steps(cfg, num_samples=None):
    """A prior trained 2 steps, evaluated, sampled (`num_samples`, default the config's)
    and saved at step 2."""
    cfg.train.update(num_steps=2, log_every_steps=1, eval_every_steps=2, sample_every_steps=2,
                     checkpoint_every_steps=2)
    if num_samples is not None:
        cfg.train.num_samples = num_samples
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    vq, top, bottom = root / "vqvae", root / "top", root / "bottom"
    train.train_and_evaluate(_config(str(ROOT / "experiments" / "vqvae_mnist.py:smoke")), vq)
    # The bottom prior's preview (code maps drawn given the top codes) is the one tested;
    # the top prior writes none (train.num_samples=0), one sampler fewer to compile.
    train.train_and_evaluate(_two_steps(_config(f"{PRIORS}:smoke_top", path=str(vq)), 0), top)
    train.train_and_evaluate(_two_steps(_config(f"{PRIORS}:smoke_bottom", path=str(vq))), bottom)
    return vq, top, bottom


def test_prior_previews_are_code_maps(runs):
    _, top, bottom = runs
    assert not list(top.glob("samples_*.png"))  # train.num_samples=0
    # 4 code maps of 14x14 in 2 x 2 cells (a grey border of 128), upscaled 4x; code k of
    # the smoke codebook's 8 is grey level 255 k / 7.
    grid = np.asarray(Image.open(bottom / "samples_2.png"))
    assert grid.shape == (4 * (2 * 15 + 1),) * 2
    levels = np.round(255 * np.arange(8) / 7)
    cells = grid.reshape(31, 4, 31, 4)[:, 0, :, 0]
    maps = cells[1:].reshape(2, 15, 31)[:, :14].reshape(28, 31)[:, 1:].reshape(28, 2, 15)
    assert np.isin(maps[..., :14], levels).all() and (cells[0] == 128).all()


def test_vqvae_run_writes_its_metrics_and_reconstruction_grid(runs):
    vq, _, _ = runs
    rows = [r for r in jaxar.training.reporting.read_metrics(vq) if "eval/mse" in r]
    assert [r["step"] for r in rows] == [3, 6]
    last = rows[-1]
    assert last["eval/psnr"] == pytest.approx(10 * np.log10(4 / last["eval/mse"]), rel=1e-6)
    for level in ("top", "bottom"):
        assert 0 < last[f"eval/code_usage_{level}"] <= 1
        assert 1 <= last[f"eval/perplexity_{level}"] <= 8  # smoke codebook: 8 codes
    # 4 test images above their 4 reconstructions: 2 rows x 4 columns of 28x28, x4.
    grid = np.asarray(Image.open(vq / "samples_6.png"))
    assert grid.shape == (4 * (2 * 29 + 1), 4 * (4 * 29 + 1))


def test_codes_are_the_vqvae_encoding_of_its_splits_and_are_reused(runs):
    vq, _, _ = runs
    meta = codes_data.read_meta(vq)
    assert meta["shapes"] == {"top": [7, 7], "bottom": [14, 14]}
    assert meta["num_codes"] == 8 and meta["num_classes"] == 10
    cfg, model, variables, _ = jaxar.training.checkpoint.load_run(vq)
    _, test = data.load_splits(cfg)
    encode = jax.jit(functools.partial(model.apply, method=model.encode))  # eagerly: op by op
    top, bottom = encode(variables, test.get(np.arange(5))["x"])
    with np.load(codes_data.split_file(vq, "test")) as stored:
        np.testing.assert_array_equal(stored["top"][:5], np.asarray(top))
        np.testing.assert_array_equal(stored["bottom"][:5], np.asarray(bottom))
        np.testing.assert_array_equal(stored["labels"], test.get(np.arange(len(test)))["labels"])
    stamp = codes_data.split_file(vq, "train").stat().st_mtime_ns
    assert codes.encode_run(vq) == meta  # same checkpoint: nothing encoded again
    assert codes_data.split_file(vq, "train").stat().st_mtime_ns == stamp


def test_bottom_level_serves_the_top_codes_as_cond(runs):
    vq, _, _ = runs
    cfg = _config(f"{PRIORS}:smoke_bottom", path=str(vq))
    train_split, _ = data.load_splits(cfg)
    batch = train_split.get(np.arange(3))
    with np.load(codes_data.split_file(vq, "train")) as stored:
        np.testing.assert_array_equal(batch["x"][..., 0], stored["bottom"][:3])
        np.testing.assert_array_equal(batch["cond"][..., 0], stored["top"][:3])
    assert batch["x"].shape == (3, 14, 14, 1) and batch["cond"].shape == (3, 7, 7, 1)


def test_priors_train_on_codes_and_report_bits_per_code(runs):
    _, top, bottom = runs
    for run in (top, bottom):
        rows = [r for r in jaxar.training.reporting.read_metrics(run) if "eval/bpd" in r]
        assert rows and all(0 < r["eval/bpd"] < 2 * np.log2(8) for r in rows)


def test_cli_samples_images_through_the_latent_space(runs, tmp_path, capsys):
    _, top, bottom = runs
    out = tmp_path / "latent.png"
    # 16 samples here, in the completion test and in the notebook's cell: one compiled
    # sampler per prior serves all three.
    args = ["--workdir", str(bottom), "--top", str(top), "--num", "16", "--out", str(out),
            "--labels", "3", "--seed", "1"]
    assert sample_cli.main(args) == 0
    assert "through the VQ-VAE's latent space" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (4 * (4 * 29 + 1), 4 * (4 * 29 + 1))  # 4x4 grid of 28x28, x4
    # The same images from Python, under the same key.
    pipeline = jaxar.load_latent(bottom, top)
    labels = np.full(16, 3, np.int32)
    images = jaxar.generate_latent(pipeline, jax.random.key(1), 16, labels=labels)
    assert images.shape == (16, 28, 28, 1) and images.dtype == np.int32
    assert 0 <= images.min() and images.max() < 256
    again = jaxar.generate_latent(pipeline, jax.random.key(1), 16, labels=labels, method="naive")
    np.testing.assert_array_equal(images, again)  # cached == naive in both priors


def test_completion_keeps_the_codes_of_the_kept_rows(runs, tmp_path):
    vq, top, bottom = runs
    pipeline = jaxar.load_latent(bottom, top)
    keep = np.zeros((28, 28, 1), bool)
    keep[:14] = True
    masks = jaxar.training.latent.code_masks(pipeline, keep)
    assert masks["top"][:3].all() and not masks["top"][3:].any()  # 4-pixel blocks: 3 rows
    assert masks["bottom"][:7].all() and not masks["bottom"][7:].any()
    out = tmp_path / "done.png"
    assert sample_cli.main(["--workdir", str(bottom), "--top", str(top), "--num", "16",
                            "--out", str(out), "--complete", "0", "--keep", "rows:14"]) == 0
    grid = np.asarray(Image.open(out))[::4, ::4]
    assert grid.shape == (1 + 29, 1 + 18 * 29)  # original, occluded, 16 completions
    occluded = grid[1:29, 30:58]
    np.testing.assert_array_equal(occluded[14:], 128)


def test_latent_errors_name_the_argument(runs, tmp_path):
    vq, top, bottom = runs
    with pytest.raises(ValueError, match="--top must be a prior trained on data.source='codes' "
                       "with data.level='top'"):
        jaxar.load_latent(bottom, bottom)
    with pytest.raises(ValueError, match="--workdir must be a prior"):
        jaxar.load_latent(vq, top)
    cfg = _config(f"{PRIORS}:smoke_top", path=str(top))  # a prior is no VQ-VAE
    with pytest.raises(train.BadInput, match="not a VQ-VAE run"):
        train.train_and_evaluate(cfg, tmp_path / "a")
    cfg = _config(f"{PRIORS}:smoke_top", path=str(vq), num_levels=16)
    with pytest.raises(train.BadInput, match="data.num_levels=16 must equal the codebook size 8"):
        train.train_and_evaluate(cfg, tmp_path / "b")
    cfg = _config(f"{PRIORS}:smoke_top", path=str(tmp_path))
    with pytest.raises(train.BadInput, match="holds no checkpoint"):
        train.train_and_evaluate(cfg, tmp_path / "c")


def test_quickstart_notebook_cell_samples_through_the_latent_space(runs, monkeypatch, capsys):
    """The quickstart's latent cell, run on this module's priors (the notebook test runs
    the rest of the notebook, where no priors exist and the cell skips itself)."""
    import matplotlib

    matplotlib.use("Agg")
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    setup, latent_cell = cells[0], next(c for c in cells if "jaxar.load_latent" in c)
    _, top, bottom = runs
    monkeypatch.setenv("JAXAR_LATENT_BOTTOM", str(bottom))
    monkeypatch.setenv("JAXAR_LATENT_TOP", str(top))
    imports = "\n".join(line for line in setup.splitlines() if line.startswith(("import", "from")))
    exec(compile(imports + "\n" + latent_cell, "quickstart", "exec"), {})
    assert "16 images through the latent space" in capsys.readouterr().out

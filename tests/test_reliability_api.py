"""No silent wrong answer from the public API and one decoding path for images: another
model's variables refused before compiling, 16-bit / palette / alpha / truncated image files
read alike everywhere, config-file errors in one line (the sampling CLI's side: see
tests/test_sample_cli.py)."""

import pathlib
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest
from model_checks import tiny_config
from PIL import Image

import jaxar
from jaxar import models, sampling
from jaxar.cli import train as train_cli
from jaxar.data import images
from jaxar.models import common
from jaxar.nn import shifted_layers

ROOT = pathlib.Path(__file__).resolve().parents[1]
MADE_SMOKE = str(ROOT / "experiments" / "made_mnist.py:smoke")


def _made(num_classes=0, hidden=(32,)):
    cfg = jaxar.load_config(MADE_SMOKE)
    cfg.model.num_classes = num_classes
    cfg.data.num_classes = max(num_classes, cfg.data.num_classes)
    cfg.model.hidden = hidden
    model = jaxar.build_model(cfg)
    return model, jaxar.init_variables(model, cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def made():
    return _made()


def test_another_models_variables_are_refused_before_compiling(made):
    model, variables = made
    x = np.zeros((2, *model.event_shape), np.int32)
    bpd = jaxar.bits_per_dim(model, variables, x)
    # the same variables as FrozenDicts: the same numbers
    frozen = flax.core.freeze(variables)
    np.testing.assert_array_equal(jaxar.bits_per_dim(model, frozen, x), bpd)
    compiled = models._log_prob._cache_size()

    model3, variables3 = _made(num_classes=3)
    # the 3-class model's variables hold the unconditional one's and its label weights
    with pytest.raises(ValueError, match=r"^variables\['params'\]\['label_layers_0'\]"
                                         r"\['kernel'\] is not a variable of this MADE"):
        jaxar.log_prob(model, variables3, x)
    with pytest.raises(ValueError, match=r"^variables\['params'\]\['label_layers_0'\]"
                                         r"\['kernel'\] is missing: this MADE has a variable of "
                                         r"shape \(3, 32\)"):
        jaxar.log_prob(model3, variables, x, labels=np.zeros(2, np.int32))
    _, wide = _made(hidden=(16,))
    with pytest.raises(ValueError, match=r"^variables\['params'\]\['hidden_layers_0'\]\['bias'\] "
                                         r"has shape \(16,\), this MADE's has shape \(32,\)"):
        jaxar.bits_per_dim(model, wide, x)
    with pytest.raises(ValueError, match=r"^variables must be a dict of collections"):
        jaxar.log_prob(model, [variables], x)
    with pytest.raises(ValueError, match=r"^variables\['params'\] must be an array, got int"):
        jaxar.log_prob(model, {"params": 3}, x)
    assert models._log_prob._cache_size() == compiled  # refused before anything compiled

    sampler_compiled = sampling.jitted_sample._cache_size()
    with pytest.raises(ValueError, match=r"^variables\['params'\]\['hidden_layers_0'\]"):
        jaxar.sample(model, wide, jax.random.key(0), 2)
    with pytest.raises(ValueError, match=r"is missing"):
        jaxar.sample(model3, variables, jax.random.key(0), 2, labels=np.zeros(2, np.int32))
    assert sampling.jitted_sample._cache_size() == sampler_compiled


def test_the_traced_variable_tree_equals_what_init_returned(made):
    model, variables = made
    remembered = common._SHAPES.pop(model)  # init_variables recorded it
    common._ABSTRACT.pop(model, None)
    common.check_variables(model, variables)  # traced with jax.eval_shape
    traced = common._SHAPES[model]
    assert traced[0] == remembered[0] and traced[1] == remembered[1]
    assert traced[2] == remembered[2] == [(32,), (36, 32), (36,), (32, 36)]
    # Traced once per model: an equal model (the same config built again) reuses it.
    common._SHAPES.pop(model)
    again = jaxar.build_model(jaxar.load_config(MADE_SMOKE))
    assert again == model and again is not model
    assert common.abstract_variables(again) is common.abstract_variables(model)
    assert common._SHAPES[model] == traced


@pytest.mark.parametrize("name,shape,levels,kwargs", [
    ("pixelcnn_pp", (4, 4, 3), 8, dict(features=4, num_resnets=1, num_resolutions=2,
                                       num_mixtures=2, num_classes=2)),
    ("pixelsnail", (4, 4, 1), 8, dict(features=4, num_blocks=2, num_resnets=1,
                                      key_features=4, value_features=4,
                                      likelihood="categorical", cond_shape=(2, 2, 1),
                                      cond_levels=3, num_classes=2)),
])
def test_abstract_variables_equal_the_shapes_of_a_real_init(name, shape, levels, kwargs):
    """abstract_variables traces the init without its values (no initializers, no
    data-dependent statistics: `shifted_layers.abstract_init`): the same tree, shapes and
    dtypes as the init that computes them, from a trace of at most 60% of its size."""
    model = jaxar.build_model(tiny_config(name, shape, levels, **kwargs))
    common._ABSTRACT.pop(model, None)
    abstract = common.abstract_variables(model)
    x = np.zeros((1, *shape), np.int32)
    labels = np.zeros((1,), np.int32)
    cond = np.zeros((1, *model.cond_shape), np.int32) if model.cond_shape else None
    def init():  # a new function each time: jax keeps one trace per function
        return lambda x, labels, cond: model.init(
            {"params": jax.random.key(0), "dropout": jax.random.key(0)}, x, labels, cond)

    with common.rng_context():
        real = jax.eval_shape(init(), x, labels, cond)
        real_eqns = len(jax.make_jaxpr(init())(x, labels, cond).eqns)
        with shifted_layers.abstract_init():
            abstract_eqns = len(jax.make_jaxpr(init())(x, labels, cond).eqns)
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    for got, want in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), strict=True):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert abstract_eqns < 0.6 * real_eqns, (abstract_eqns, real_eqns)


# --- one decoding path for every image --------------------------------------------------------


def _gradient(h=6, w=8, channels=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, channels)).astype(np.uint8)


def test_16_bit_palette_and_alpha_images_decode_like_their_8_bit_rgb(tmp_path):
    rgb = _gradient()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    # 16-bit grey: every 8-bit value v as v * 257 (exactly v in 8 bits after scaling)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    la = np.stack([grey, np.full_like(grey, 9)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "palette.png")
    palette_rgb = np.asarray(palette.convert("RGB"))

    read = lambda name, channels, levels=256: images.read_image(
        tmp_path / name, (6, 8, channels), levels, resize=False)
    np.testing.assert_array_equal(read("rgb.png", 3), rgb)
    np.testing.assert_array_equal(read("rgb.png", 1)[..., 0], grey)
    np.testing.assert_array_equal(read("grey16.png", 1)[..., 0], grey)  # scaled, not clipped
    np.testing.assert_array_equal(read("grey16.png", 3), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(read("rgba.png", 3), rgb)  # alpha dropped, colour kept
    np.testing.assert_array_equal(read("la.png", 1)[..., 0], grey)
    np.testing.assert_array_equal(read("palette.png", 3), palette_rgb)
    np.testing.assert_array_equal(read("grey16.png", 1, 4)[..., 0], grey // 64)
    # resized: the 16-bit file and its 8-bit version give the same pixels at any size
    np.testing.assert_array_equal(images.read_image(tmp_path / "grey16.png", (3, 3, 1)),
                                  images.read_image(tmp_path / "grey.png", (3, 3, 1)))
    with pytest.raises(ValueError, match=r"^mask must be 6x8 pixels, got 8x6"):
        images.read_image(tmp_path / "rgb.png", (8, 6, 1), what="mask", resize=False)


def test_truncated_and_foreign_files_are_one_line_errors_naming_the_file(tmp_path):
    Image.fromarray(_gradient(32, 32)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(images.UnreadableImage) as err:
            images.read_image(tmp_path / name, (8, 8, 3), what="--complete")
        message = str(err.value)
        assert message.startswith(f"--complete: cannot read image '{tmp_path / name}' (")
        assert "\n" not in message and err.value.path == str(tmp_path / name)
    assert images.read_image(tmp_path / "whole.png", (8, 8, 3)).shape == (8, 8, 3)


# --- config files -----------------------------------------------------------------------------

BAD_CONFIGS = {
    "syntax": ("def get_config(:\n", r" cannot be loaded: SyntaxError: invalid syntax"),
    "import": ("import no_such_module_xyz\n", r" cannot be loaded: ModuleNotFoundError"),
    "raises": ("def get_config(arg=None):\n    raise RuntimeError('boom')\n",
               r": get_config\(\) failed: RuntimeError: boom"),
    "none": ("def get_config(arg=None):\n    return None\n",
             r": get_config\(\) must return an ml_collections.ConfigDict, got NoneType"),
    "missing": ("X = 1\n", r" defines no get_config\(arg\) function"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_config_file_errors_are_one_line_naming_the_file(tmp_path, capsys, kind):
    text, message = BAD_CONFIGS[kind]
    path = tmp_path / f"{kind}.py"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^config file '{path}'{message}") as err:
        jaxar.load_config(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_info:  # what jaxar-train does before absl
        train_cli._check_config_file(["jaxar-train", f"--config={path}", "--workdir", "w"])
    assert exit_info.value.code == 2
    err_lines = capsys.readouterr().err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(
        f"jaxar.cli.train: error: --config: config file '{path}'")


def test_config_file_that_is_missing_or_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"^config file '.*nope\.py' does not exist$"):
        jaxar.load_config(str(tmp_path / "nope.py"))
    with pytest.raises(ValueError, match=r"^config file '.*' is not a file$"):
        jaxar.load_config(str(tmp_path))
    with pytest.raises(ValueError, match=r"get_config\('huge'\) failed: config variant must "):
        jaxar.load_config(str(ROOT / "experiments" / "pixelcnn_mnist.py:huge"))


def test_train_cli_config_syntax_error_exits_2_in_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("def get_config(:\n")
    result = subprocess.run(
        [sys.executable, "-m", "jaxar.cli.train", "--config", str(tmp_path / "bad.py"),
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"jaxar.cli.train: error: --config: config file '{tmp_path / 'bad.py'}' cannot be "
        f"loaded: SyntaxError: invalid syntax (bad.py, line 1)"]
    assert not (tmp_path / "run").exists()

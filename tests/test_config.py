"""Strict configs: unknown keys, shared keys off their default, and bad values are
ValueErrors that name the key (`jaxar.config.validate`, `jaxar.build_model`)."""

import ast
import dataclasses
import pathlib

import ml_collections
import pytest
from model_checks import tiny_config

import jaxar
from experiments import base
from jaxar import config, data, settings
from jaxar.data import pipeline
from jaxar.models import REGISTRY, configs, pixelcnn, wavenet
from jaxar.training import precision

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.py")
                     if p.stem not in ("__init__", "base"))


def variants(path) -> list[str]:
    """Every variant name of an experiment file (from its "must be one of" error)."""
    with pytest.raises(ValueError, match="config variant must be one of") as err:
        jaxar.load_config(f"{path}:no_such_variant")
    return ast.literal_eval(str(err.value).split("one of ", 1)[1].split(", got")[0])


def smoke(name="pixelcnn_mnist", **overrides):
    """The smoke config of `name` with dotted-key `overrides`, rebuilt from a plain dict so
    that any key and any type can be set."""
    tree = jaxar.load_config(str(ROOT / "experiments" / f"{name}.py:smoke")).to_dict()
    for dotted, value in overrides.items():
        *path, leaf = dotted.split("__")
        node = tree
        for part in path:
            node = node[part]
        node[leaf] = value
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_variant_validates(path):
    names = variants(path)
    assert names
    for name in names:
        cfg = jaxar.load_config(f"{path}:{name}")
        config.validate(cfg)  # raises on any unknown key or bad value
        assert jaxar.build_model(cfg).event_shape == tuple(cfg.data.shape)


def test_the_base_config_is_the_schema_of_what_jaxar_reads():
    cfg = base.get_base_config()
    assert "num_classes" in cfg.data and "image_shape" in cfg.data  # read by the pipeline
    assert settings.MODEL_SHARED == {k: cfg.model[k] for k in settings.MODEL_SHARED}
    assert settings.COMPUTE_DTYPES == tuple(precision.COMPUTE_DTYPES)


# -- model keys ---------------------------------------------------------------------------

def test_unknown_model_key_is_named_with_a_suggestion_and_the_valid_keys():
    with pytest.raises(ValueError, match=r"model\.featurs .*did you mean 'features'\?") as err:
        jaxar.build_model(smoke(model__featurs=64))
    assert "valid keys: architecture, conv_impl, dilations, features," in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown config key model\.num_filters"):
        jaxar.build_model(smoke(model__num_filters=64))
    with pytest.raises(ValueError, match=r"model\.zzz for model 'pixelcnn'; valid keys"):
        jaxar.build_model(smoke(model__zzz=1))  # nothing close: no suggestion


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_refuses_a_key_it_does_not_read(name):
    # Keys of other families: each is read by some model, but not by this one.
    foreign = {"made": "dilations", "pixelcnn": "hidden", "gated_pixelcnn": "dilations",
               "pixelcnn_pp": "hidden", "pixelsnail": "hidden", "wavenet": "hidden",
               "transformer": "hidden", "vqvae": "hidden"}[name]
    shape = (16,) if name == "wavenet" else (4, 4, 3)
    cfg = tiny_config(name, shape, 256, **{foreign: (1,)})
    with pytest.raises(ValueError, match=f"unknown config key model.{foreign} for model "
                                         f"'{name}'"):
        jaxar.build_model(cfg)
    keys = configs.config_keys(REGISTRY[name])
    assert {"name", "num_classes", "ordering"} <= set(keys)
    assert not {"event_shape", "num_levels", "parent"} & set(keys)


def test_shared_and_fixed_keys_are_accepted_only_at_their_value():
    assert isinstance(jaxar.build_model(smoke(model__ordering="raster")), pixelcnn.PixelCNN)
    with pytest.raises(ValueError, match="pixelcnn only supports ordering 'raster'"):
        jaxar.build_model(smoke(model__ordering="zigzag"))
    with pytest.raises(ValueError, match="wavenet only supports ordering 'raster'"):
        jaxar.build_model(tiny_config("wavenet", (16,), 256, ordering="random"))
    pp = dict(features=4, num_resnets=0, num_resolutions=1, num_mixtures=1)
    jaxar.build_model(tiny_config("pixelcnn_pp", (4, 4, 3), 256, likelihood="dmol", **pp))
    with pytest.raises(ValueError, match="model.likelihood must be 'dmol'"):
        jaxar.build_model(tiny_config("pixelcnn_pp", (4, 4, 3), 256, likelihood="bernoulli",
                                      **pp))


@pytest.mark.parametrize("key,value,message", [
    ("features", 0, r"model\.features must be >= 1, got 0"),
    ("features", 6.5, r"model\.features must be an int, got 6\.5"),
    ("num_classes", -1, r"model\.num_classes must be >= 0"),
    ("dilations", (1, 0), r"model\.dilations must be >= 1"),
    ("dilations", (1, 2.0), r"model\.dilations must be a tuple of ints"),
    ("architecture", "deep", r"model\.architecture must be 'residual' or 'plain'"),
    ("kernel_size", 4, r"model\.kernel_size / model\.input_kernel_size must be odd"),
    ("conv_impl", "fast", r"model\.conv_impl must be one of"),
    ("num_layers", 9, r"model\.num_layers=9 needs as many model\.dilations"),
])
def test_model_values_are_checked(key, value, message):
    with pytest.raises(ValueError, match=message):
        jaxar.build_model(smoke(**{f"model__{key}": value}))


def test_model_values_keep_their_meaning():
    """Lists become tuples, None takes the dataclass default, and derived keys and
    defaults resolve as they always did."""
    model = jaxar.build_model(smoke(model__dilations=[1, 2, 1], model__num_layers=None))
    assert model.dilations == (1, 2, 1) and model.num_layers == 3  # one block per dilation
    defaults = {f.name: f.default for f in dataclasses.fields(pixelcnn.PixelCNN)}
    assert jaxar.build_model(smoke(model__features=None)).features == defaults["features"]
    wave = jaxar.build_model(tiny_config("wavenet", (16,), 256))
    defaults = {f.name: f.default for f in dataclasses.fields(wavenet.WaveNet)}
    assert wave.dilations == defaults["dilations"]  # num_stacks=2, layers_per_stack=10
    wave = jaxar.build_model(tiny_config("wavenet", (16,), 256, num_stacks=2,
                                         layers_per_stack=2, cond_shape=[4, 2]))
    assert wave.dilations == (1, 2, 1, 2) and wave.cond_shape == (4, 2)
    wave = jaxar.build_model(tiny_config("wavenet", (16,), 256, dilations=[1, 2, 4]))
    assert wave.dilations == (1, 2, 4)
    with pytest.raises(ValueError, match=r"model\.dilations and model\.num_stacks"):
        jaxar.build_model(tiny_config("wavenet", (16,), 256, dilations=[1], num_stacks=1))
    with pytest.raises(ValueError, match=r"model\.layers_per_stack must be >= 1"):
        jaxar.build_model(tiny_config("wavenet", (16,), 256, layers_per_stack=0))
    assert jaxar.build_model(tiny_config("made", (2, 2, 1), 4)).likelihood_name == "categorical"
    assert jaxar.build_model(tiny_config("made", (2, 2, 1), 2)).likelihood_name == "bernoulli"
    gated = jaxar.build_model(tiny_config("gated_pixelcnn", (4, 4, 1), 2, cond_shape=()))
    assert gated.cond_shape is None


# -- data, train, eval, mesh and top-level keys --------------------------------------------

@pytest.mark.parametrize("key,suggestion", [
    ("train__num_step", "num_steps"),
    ("train__learning_rte", "learning_rate"),
    ("data__nmae", "name"),
    ("eval__batch_sise", "batch_size"),
    ("mesh__fsdpp", "fsdp"),
    ("trian", "train"),
])
def test_unknown_keys_of_every_section_are_named_with_a_suggestion(key, suggestion):
    section, _, leaf = key.rpartition("__")
    name = f"{section}.{leaf}" if section else leaf
    with pytest.raises(ValueError, match=rf"unknown config key {name}; "
                                         rf"did you mean '{suggestion}'\? valid keys: "):
        config.validate(smoke(**{key: 3}))


@pytest.mark.parametrize("key,value,message", [
    ("train__num_steps", 0, r"train\.num_steps must be an int >= 1, got 0"),
    ("train__num_steps", -5, r"train\.num_steps must be an int >= 1, got -5"),
    ("train__batch_size", 0, r"train\.batch_size must be an int >= 1"),
    ("train__init_batch_size", 0, r"train\.init_batch_size must be an int >= 1"),
    ("train__num_samples", -1, r"train\.num_samples must be an int >= 0, got -1"),
    ("train__num_samples", True, r"train\.num_samples must be an int, got True"),
    ("train__log_every_steps", 0, r"train\.log_every_steps must be an int >= 1"),
    ("train__eval_every_steps", -1, r"train\.eval_every_steps must be an int >= 1"),
    ("train__checkpoint_every_steps", 0, r"train\.checkpoint_every_steps must be an int"),
    ("train__sample_every_steps", 0, r"train\.sample_every_steps must be an int >= 1"),
    ("train__max_checkpoints", 0, r"train\.max_checkpoints must be an int >= 1"),
    ("train__grad_accum_steps", 0, r"train\.grad_accum_steps must be an int >= 1"),
    ("train__grad_accum_steps", 3, r"train\.batch_size=8 must be divisible by train\.grad_"),
    ("train__learning_rate", -1.0, r"train\.learning_rate must be > 0, got -1\.0"),
    ("train__learning_rate", float("nan"), r"train\.learning_rate must be > 0, got nan"),
    ("train__lr_decay", 0.0, r"train\.lr_decay must lie in \(0, 1\], got 0\.0"),
    ("train__lr_decay", 1.01, r"train\.lr_decay must lie in \(0, 1\]"),
    ("train__ema_decay", 1.5, r"^train\.ema_decay must lie in \[0, 1\), got 1\.5$"),
    ("train__ema_decay", 1.0, r"train\.ema_decay must lie in \[0, 1\)"),
    ("train__b1", 1.5, r"train\.b1 must lie in \[0, 1\), got 1\.5"),
    ("train__b2", -0.1, r"train\.b2 must lie in \[0, 1\)"),
    ("train__grad_clip", float("inf"), r"train\.grad_clip must be a finite number"),
    ("train__compute_dtype", "float16", r"train\.compute_dtype must be one of"),
    ("train__max_bpd", 0.0, r"train\.max_bpd must be a number > 0"),
    ("train__learning_rate", "fast", r"train\.learning_rate must be a float"),
    ("eval__batch_size", 0, r"eval\.batch_size must be an int >= 1"),
    ("eval__ensemble_masks", 0, r"eval\.ensemble_masks must be an int >= 1"),
    ("eval__ensemble_masks", 2, r"eval\.ensemble_masks must lie in \[1, 1\] for model .pixelcnn."),
    ("mesh__data", 0, r"mesh\.data must be a positive int or -1"),
    ("mesh__fsdp_min_size", -1, r"mesh\.fsdp_min_size must be an int >= 0"),
    ("seed", -1, r"seed must be an int >= 0"),
    ("data__num_levels", 1, r"data\.num_levels must be an int >= 2, got 1"),
    ("data__num_levels", 2.5, r"data\.num_levels must be an int"),
    ("data__shape", (8, 0, 1), r"data\.shape must be a non-empty tuple of positive ints"),
    ("data__num_train", 0, r"data\.num_train must be an int >= 1"),
    ("data__num_classes", -2, r"data\.num_classes must be an int >= 0"),
    ("data__source", "web", r"data\.source must be one of"),
    ("data__test_fraction", 1.0, r"data\.test_fraction must lie in \(0, 1\), got 1\.0"),
    ("data__path", "/somewhere", r"data\.path is read only with data\.source='folder'"),
    ("data__tfds_dir", "/somewhere", r"data\.tfds_dir is read only with data\.source='tfds'"),
    ("data__image_shape", (3, 3), r"data\.image_shape must be positive ints with as many"),
    ("data__shape", (8, 1, 8), r"data\.shape \(8, 1, 8\) cannot be shown as a sample grid"),
    ("model__num_classes", -1, r"model\.num_classes must be >= 0"),
])
def test_bad_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        config.validate(smoke(**{key: value}))


def test_values_at_the_edges_of_their_ranges_are_accepted():
    config.validate(smoke(train__ema_decay=0.0, train__b1=0.0, train__b2=0.0,
                          train__lr_decay=1.0, train__grad_clip=0.0, train__num_steps=1,
                          eval__batch_size=None, data__num_train=None, mesh__fsdp=-1,
                          mesh__data=1, data__image_shape=[64, 1], train__max_bpd=float("inf")))
    made = smoke("made_mnist", model__num_masks=3, eval__ensemble_masks=3)
    config.validate(made)
    made.eval.ensemble_masks = 4
    with pytest.raises(ValueError, match=r"eval\.ensemble_masks must lie in \[1, 3\] for "
                                         r"model 'made' .*, got 4"):
        config.validate(made)


def test_an_empty_workdir_is_refused():
    with pytest.raises(ValueError, match="--workdir must name a directory"):
        config.validate(smoke(), "")
    config.validate(smoke(), "runs/x")


def test_class_labels_must_exist_in_the_data():
    """model.num_classes > 0 needs a labelled dataset with at most that many classes."""
    with pytest.raises(ValueError, match=r"model\.num_classes=10 needs labelled data, but "
                                         r"synthetic/stripes has no labels"):
        data.create_datasets(smoke(model__num_classes=10))
    data.create_datasets(smoke(model__num_classes=2, data__num_classes=2))
    with pytest.raises(ValueError, match=r"model\.num_classes=2 is smaller than the 4 label"):
        data.create_datasets(smoke(model__num_classes=2, data__num_classes=4))
    train, _ = data.load_splits(smoke(data__source="embedded", data__name="mnist",
                                      data__shape=(28, 28, 1)))
    with pytest.raises(ValueError, match=r"data\.num_classes=12 does not match the 10 label"):
        pipeline.check_labels(smoke(data__source="embedded", data__num_classes=12), train)

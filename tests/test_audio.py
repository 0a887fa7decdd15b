"""Tests for mu-law companding, the audio sources and the WaveNet audio config."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer, naming
from tensorflow_datasets.core.features import feature as feature_lib

import jaxar
from jaxar import data
from jaxar.data import audio
from jaxar.distributions import mu_law_decode, mu_law_encode
from jaxar.training import reporting

# --- mu-law -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_levels", [256, 16])
def test_mu_law_decode_then_encode_is_the_identity(num_levels):
    codes = np.arange(num_levels)
    np.testing.assert_array_equal(mu_law_encode(mu_law_decode(codes, num_levels), num_levels),
                                  codes)


def test_mu_law_encode_then_decode_is_within_half_a_step():
    x = np.linspace(-1.0, 1.0, 20001)
    compand = lambda v: np.sign(v) * np.log1p(255 * np.abs(v)) / np.log(256)
    error = np.abs(compand(mu_law_decode(mu_law_encode(x))) - compand(x))
    # Half a quantization step of the companded signal, which spans 255 steps over [-1, 1].
    assert error.max() <= 1.0 / 255 + 1e-6
    # Small amplitudes are resolved far more finely than large ones (the point of mu-law):
    # the step in x is (1 + mu)^|y| log(1 + mu) / mu times the companded step 2 / mu.
    linear_error = np.abs(mu_law_decode(mu_law_encode(x)) - x)
    assert linear_error[np.abs(x) <= 0.02].max() < 6e-4
    assert linear_error[np.abs(x) >= 0.8].max() > 1e-2


def test_mu_law_known_values_monotone_and_same_on_jax():
    codes = mu_law_encode(np.array([-1.0, 0.0, 1.0, 7.0]))
    np.testing.assert_array_equal(codes, [0, 128, 255, 255])  # 7.0 is clipped
    np.testing.assert_allclose(mu_law_decode(np.array([0, 255])), [-1.0, 1.0], atol=1e-6)
    x = np.linspace(-1.0, 1.0, 999)
    assert np.all(np.diff(mu_law_encode(x)) >= 0)
    centres = mu_law_decode(np.arange(256))
    np.testing.assert_array_equal(np.asarray(mu_law_encode(jnp.asarray(centres))), np.arange(256))
    np.testing.assert_allclose(np.asarray(mu_law_decode(jnp.arange(256))), centres, atol=1e-6)


# --- synthetic sinusoids ------------------------------------------------------------------


def sinusoid_cfg(num_classes=4, length=2048, num_levels=256, seed=0):
    return ml_collections.ConfigDict({
        "seed": seed,
        "data": {"source": "synthetic", "name": "sinusoids", "shape": (length,),
                 "num_levels": num_levels, "num_classes": num_classes, "num_train": 24,
                 "num_test": 8},
        "train": {"batch_size": 4},
    })


def test_sinusoids_are_seeded_mu_law_codes():
    train, test = data.load_splits(sinusoid_cfg())
    batch = train.get(np.arange(len(train)))
    assert batch["x"].shape == (24, 2048) and batch["x"].dtype == np.int32
    assert batch["x"].min() >= 0 and batch["x"].max() <= 255
    # Peak amplitude 0.8 -> codes reach beyond mu_law_encode(0.7) but never 0.8+.
    assert batch["x"].max() > mu_law_encode(0.7) and batch["x"].max() <= mu_law_encode(0.8)
    again = data.load_splits(sinusoid_cfg())[0].get(np.arange(24))["x"]
    np.testing.assert_array_equal(batch["x"], again)
    other_seed = data.load_splits(sinusoid_cfg(seed=1))[0].get(np.arange(24))["x"]
    assert not np.array_equal(batch["x"], other_seed)
    assert not np.array_equal(batch["x"][:8], test.get(np.arange(8))["x"])


def test_sinusoid_label_sets_the_frequency_band():
    train, _ = data.load_splits(sinusoid_cfg())
    batch = train.get(np.arange(len(train)))
    wave_NL = mu_law_decode(batch["x"])
    spectrum = np.abs(np.fft.rfft(wave_NL, axis=1))
    peak_hz = np.fft.rfftfreq(2048, 1 / audio.SAMPLE_RATE)[spectrum.argmax(axis=1)]
    edges = np.geomspace(audio.MIN_HZ, audio.MAX_HZ, 5)
    bin_hz = audio.SAMPLE_RATE / 2048
    assert len(set(batch["labels"].tolist())) >= 3
    assert np.all(peak_hz >= edges[batch["labels"]] - bin_hz)
    assert np.all(peak_hz <= edges[batch["labels"] + 1] + bin_hz)


def test_sinusoids_reduce_levels_like_images():
    full = data.load_splits(sinusoid_cfg(length=64))[1].get(np.arange(8))["x"]
    coarse = data.load_splits(sinusoid_cfg(length=64, num_levels=16))[1].get(np.arange(8))["x"]
    np.testing.assert_array_equal(coarse, full * 16 // 256)


# --- TFDS audio (prepared ArrayRecord, read without TensorFlow) -----------------------------

SPEECH_SPECS = {
    "audio": feature_lib.TensorInfo(shape=(None,), dtype=np.int16),
    "label": feature_lib.TensorInfo(shape=(), dtype=np.int64),
}
NSYNTH_SPECS = {
    "id": feature_lib.TensorInfo(shape=(), dtype=np.object_),
    "audio": feature_lib.TensorInfo(shape=(None,), dtype=np.float32),
    "pitch": feature_lib.TensorInfo(shape=(), dtype=np.int64),
    "instrument": {key: feature_lib.TensorInfo(shape=(), dtype=np.int64)
                   for key in ("family", "label", "source")},
    "qualities": {"bright": feature_lib.TensorInfo(shape=(), dtype=np.bool_)},
}


def write_prepared(directory, dataset, split, examples, specs, num_shards=2):
    """Writes examples the way `tfds build --file_format=array_record` does: tf.Example
    protos (tfds' own serializer) in ArrayRecord shards named by tfds' file template."""
    serializer = example_serializer.ExampleSerializer(specs)
    template = naming.ShardedFileTemplate(
        data_dir=directory, dataset_name=dataset, split=split, filetype_suffix="array_record")
    rows_per_shard = np.array_split(np.arange(len(examples)), num_shards)
    for path, rows in zip(template.sharded_filepaths(num_shards), rows_per_shard, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
        for row in rows:
            writer.write(serializer.serialize_example(examples[row]))
        writer.close()


def speech_examples(rng, n):
    lengths = rng.integers(30, 120, n)  # some clips shorter than the crop, some longer
    return [{"audio": rng.integers(-32768, 32768, k).astype(np.int16),
             "label": int(rng.integers(12))} for k in lengths]


def audio_cfg(tmp_path, name, length=64, num_levels=256):
    return ml_collections.ConfigDict({
        "seed": 0,
        "data": {"source": "tfds", "name": name, "shape": (length,), "num_levels": num_levels,
                 "tfds_dir": str(tmp_path)},
        "train": {"batch_size": 4},
    })


def test_speech_commands_records_are_centre_cropped_mu_law(tmp_path):
    rng = np.random.default_rng(0)
    examples = {split: speech_examples(rng, n) for split, n in (("train", 10), ("test", 7))}
    for split, exs in examples.items():
        write_prepared(tmp_path / "speech_commands" / "0.0.3", "speech_commands", split, exs,
                       SPEECH_SPECS)
    # An older prepared version must be ignored in favour of the newest one.
    write_prepared(tmp_path / "speech_commands" / "0.0.2", "speech_commands", "test",
                   speech_examples(rng, 3), SPEECH_SPECS, num_shards=1)
    train, test = data.load_splits(audio_cfg(tmp_path, "speech_commands"))
    assert (len(train), len(test), test.num_classes) == (10, 7, 12)
    batch = test.get(np.arange(7))
    for row, example in enumerate(examples["test"]):
        wave = audio.centre_crop(example["audio"] / 32768.0, 64)
        np.testing.assert_array_equal(batch["x"][row], mu_law_encode(wave))
        assert batch["labels"][row] == example["label"]
    assert batch["x"].shape == (7, 64) and batch["x"].dtype == np.int32


def test_prepared_records_are_read_alike_in_grain_workers(tmp_path):
    """ArrayRecord shards read by a grain worker process (the source pickled into it)
    give the batches the training process reads itself."""
    rng = np.random.default_rng(3)
    write_prepared(tmp_path / "speech_commands" / "0.0.3", "speech_commands", "train",
                   speech_examples(rng, 12), SPEECH_SPECS)
    write_prepared(tmp_path / "speech_commands" / "0.0.3", "speech_commands", "test",
                   speech_examples(rng, 4), SPEECH_SPECS, num_shards=1)
    batches = {}
    for workers in (0, 1):
        cfg = audio_cfg(tmp_path, "speech_commands")
        cfg.data.num_workers = workers
        iterator, _ = data.create_datasets(cfg, process_index=0, process_count=1)
        try:
            batches[workers] = [next(iterator) for _ in range(5)]  # crosses an epoch
        finally:
            iterator.close()
    for got, want in zip(batches[1], batches[0], strict=True):
        np.testing.assert_array_equal(got["x"], want["x"])
        np.testing.assert_array_equal(got["labels"], want["labels"])


def test_nsynth_family_labels_and_float_audio(tmp_path):
    rng = np.random.default_rng(1)
    examples = [{"id": f"note{k}", "audio": rng.uniform(-1, 1, 100).astype(np.float32),
                 "pitch": int(rng.integers(128)),
                 "instrument": {"family": int(rng.integers(11)), "label": int(rng.integers(1006)),
                                "source": int(rng.integers(3))},
                 "qualities": {"bright": bool(k % 2)}} for k in range(6)]
    directory = tmp_path / "nsynth" / "gansynth_subset" / "2.3.3"
    for split in ("train", "test"):
        write_prepared(directory, "nsynth", split, examples, NSYNTH_SPECS, num_shards=3)
    cfg = audio_cfg(tmp_path, "nsynth/gansynth_subset", length=40, num_levels=16)
    _, test = data.load_splits(cfg)
    batch = test.get(np.array([5, 0, 3]))
    for row, k in enumerate([5, 0, 3]):
        wave = audio.centre_crop(examples[k]["audio"].astype(np.float64), 40)
        np.testing.assert_array_equal(batch["x"][row], mu_law_encode(wave) * 16 // 256)
        assert batch["labels"][row] == examples[k]["instrument"]["family"]
    with pytest.raises(ValueError, match=r"data\.name='nsynth'.*tfds build nsynth"):
        data.load_splits(audio_cfg(tmp_path, "nsynth"))  # config "full" is not prepared


def test_centre_crop_pads_and_crops_around_the_centre():
    np.testing.assert_array_equal(audio.centre_crop(np.arange(7), 3), [2, 3, 4])
    np.testing.assert_array_equal(audio.centre_crop(np.arange(1, 4), 6), [0, 1, 2, 3, 0, 0])


def test_speech_commands_config_reads_prepared_data(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        write_prepared(tmp_path / "speech_commands" / "0.0.3", "speech_commands", split,
                       speech_examples(rng, 8), SPEECH_SPECS)
    cfg = jaxar.load_config("experiments/wavenet_audio.py:speech_commands")
    cfg.data.tfds_dir = str(tmp_path)
    cfg.data.shape = (96,)
    cfg.train.batch_size = 4
    cfg.eval.batch_size = 4
    iterator, test = data.create_datasets(cfg, process_index=0, process_count=1)
    batch = next(iterator)
    assert batch["x"].shape == (4, 96) and 0 <= batch["x"].min() and batch["x"].max() < 256
    assert jaxar.build_model(cfg).num_classes == test.num_classes == 12


# --- training --------------------------------------------------------------------------------


def test_wavenet_audio_smoke_config_trains(tmp_path):
    cfg = jaxar.load_config("experiments/wavenet_audio.py:smoke")
    jaxar.train_and_evaluate(cfg, str(tmp_path))
    rows = reporting.read_metrics(tmp_path)
    train_rows = [r for r in rows if "train/bpd" in r]
    eval_rows = [r for r in rows if "eval/bpd" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6] and [r["step"] for r in eval_rows] == [3, 6]
    # 256 levels: an untrained model is near 8 bits per sample.
    assert all(6.0 < r["eval/bpd"] < 9.0 for r in eval_rows)
    assert (tmp_path / "samples_6.png").exists()

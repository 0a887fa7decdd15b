"""Audio sources for sequence models: fixed-length waveforms as 8-bit mu-law codes.

- Synthetic "sinusoids": random sums of 1 to 3 sine tones at 16 kHz, with
  random log-uniform frequencies in [100, 1600) Hz, phases and amplitudes.
  With `data.num_classes = K > 0` the label picks one of K log-spaced bands
  of that range for all tones of an example, so the label is audible.
- TFDS "speech_commands" (1 s clips of 12 word classes) and "nsynth" /
  "nsynth/gansynth_subset" (4 s notes; label = the 11 instrument families),
  both 16 kHz, read from prepared ArrayRecord files. Each record is cropped to
  the event length around its centre (zero-padded around it when shorter).

Both store 256-level mu-law codes (`distributions.mu_law_encode`): the
pipeline reduces them to `data.num_levels` as it does 8-bit images.

Why TFDS audio does not go through `tfds.data_source`: in tfds 4.9.10 the
`Audio` feature's constructor calls TensorFlow (`tf.dtypes.as_dtype`) and
nsynth's feature spec names `tf.string` / `tf.bool`, so neither builder, nor
`tfds.testing.mock_data` on it, can be created without TensorFlow. The records
themselves are plain `tf.train.Example` protos in ArrayRecord shards, which
`array_record` and the protos vendored in tfds read without it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np

from jaxar import distributions
from jaxar.data.sources import RandomAccess

SAMPLE_RATE = 16_000
LEVELS = 256
SYNTHETIC_NAMES = ("sinusoids",)
MIN_HZ, MAX_HZ = 100.0, 1600.0
MAX_TONES = 3
PEAK = 0.8  # peak amplitude of a synthetic waveform


def synthetic_waveforms(rng: np.random.Generator, labels_N: np.ndarray, num_classes: int,
                        length: int) -> np.ndarray:
    """Mu-law codes int32 `[N, length]` of random sums of sinusoids (see module docstring)."""
    n = len(labels_N)
    edges = np.geomspace(MIN_HZ, MAX_HZ, max(num_classes, 1) + 1)
    lo_N1, hi_N1 = edges[labels_N][:, None], edges[labels_N + 1][:, None]
    freq_NK = np.exp(rng.uniform(np.log(lo_N1), np.log(hi_N1), (n, MAX_TONES)))
    phase_NK = rng.uniform(0.0, 2 * np.pi, (n, MAX_TONES))
    num_tones_N1 = rng.integers(1, MAX_TONES + 1, (n, 1))
    amp_NK = rng.uniform(0.2, 1.0, (n, MAX_TONES)) * (np.arange(MAX_TONES) < num_tones_N1)
    time_L = np.arange(length) / SAMPLE_RATE
    wave_NL = np.zeros((n, length))
    for k in range(MAX_TONES):
        angle_NL = 2 * np.pi * freq_NK[:, k, None] * time_L + phase_NK[:, k, None]
        wave_NL += amp_NK[:, k, None] * np.sin(angle_NL)
    wave_NL *= PEAK / amp_NK.sum(axis=1, keepdims=True)
    return distributions.mu_law_encode(wave_NL, LEVELS)


@dataclasses.dataclass(frozen=True)
class TfdsAudio:
    """Where a TFDS audio dataset keeps what we read."""

    config: str | None  # builder config directory, None when the builder has none
    label_key: str  # flattened feature key ("a/b" for nested features)
    num_classes: int
    full_scale: float  # stored amplitude of a full-scale signal


TFDS_AUDIO = {
    "speech_commands": TfdsAudio(None, "label", 12, 32768.0),  # int16 PCM
    "nsynth": TfdsAudio("full", "instrument/family", 11, 1.0),  # float32 in [-1, 1]
    "nsynth/gansynth_subset": TfdsAudio("gansynth_subset", "instrument/family", 11, 1.0),
}
TFDS_NAMES = tuple(TFDS_AUDIO)


def centre_crop(wave_T: np.ndarray, length: int) -> np.ndarray:
    """The `length` samples around the centre of the clip, zero-padded around it if shorter."""
    excess = len(wave_T) - length
    if excess >= 0:
        return wave_T[excess // 2 : excess // 2 + length]
    return np.pad(wave_T, (-excess // 2, -excess - (-excess // 2)))


def shard_paths(name: str, split: str, data_dir: str | None) -> list[str]:
    """ArrayRecord shards of a prepared split, from the newest version directory.

    The layout is the one `tfds build --file_format=array_record` writes:
    `DIR/<dataset>/[<config>/]<version>/<dataset>-<split>.array_record-NNNNN-of-NNNNN`.
    """
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    dataset = name.split("/")[0]
    config = TFDS_AUDIO[name].config
    root = os.path.join(os.path.expanduser(data_dir), dataset, *([config] if config else []))
    pattern = os.path.join(root, "*", f"{dataset}-{split}.array_record-*-of-*")
    by_version: dict[tuple[int, ...], list[str]] = {}
    for path in glob.glob(pattern):
        version = os.path.basename(os.path.dirname(path))
        if re.fullmatch(r"\d+\.\d+\.\d+", version):
            by_version.setdefault(tuple(map(int, version.split("."))), []).append(path)
    if not by_version:
        raise ValueError(
            f"TFDS dataset data.name={name!r} (split {split!r}) is not prepared as "
            f"ArrayRecord in data.tfds_dir={data_dir!r}: found nothing like {pattern}. "
            f"Prepare it once with `pip install -e .[tfds-prepare]` then `tfds build "
            f"{name} --file_format=array_record --data_dir=DIR`, or point data.tfds_dir "
            f"at already prepared data."
        )
    return sorted(by_version[max(by_version)])


class TfdsAudioSource(RandomAccess):
    """One split of a prepared TFDS audio dataset, cropped and mu-law coded per record."""

    levels = LEVELS

    def __init__(self, name: str, split: str, data_dir: str | None, length: int):
        from array_record.python import array_record_data_source  # noqa: PLC0415

        self.spec = TFDS_AUDIO[name]
        self.shape = (length,)
        self.num_classes = self.spec.num_classes
        self._records = array_record_data_source.ArrayRecordDataSource(
            shard_paths(name, split, data_dir)
        )

    def __len__(self) -> int:
        return len(self._records)

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Returns dict(image=int32 mu-law codes [n, length], label=int32 [n])."""
        from tensorflow_datasets.proto import tf_example_pb2  # noqa: PLC0415 (slow import)

        codes_NL = np.empty((len(indices), self.shape[0]), np.int32)
        label_N = np.empty(len(indices), np.int32)
        records = self._records.__getitems__(np.asarray(indices).tolist())
        for row, record in enumerate(records):
            feature = tf_example_pb2.Example.FromString(record).features.feature
            wave_T = np.asarray(_values(feature["audio"]), np.float64) / self.spec.full_scale
            wave_L = centre_crop(wave_T, self.shape[0])
            codes_NL[row] = distributions.mu_law_encode(wave_L, LEVELS)
            label_N[row] = _values(feature[self.spec.label_key])[0]
        return {"image": codes_NL, "label": label_N}


def _values(feature):
    """The numbers of one `tf.train.Feature` (tfds stores ints as int64, floats as float)."""
    return getattr(feature, feature.WhichOneof("kind")).value

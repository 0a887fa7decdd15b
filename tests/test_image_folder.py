"""Image folders as a data source: cropping, splits, labels, errors, lazy decoding, the
folder index, and training on one."""

import hashlib
import json
import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

import jaxar
from jaxar import data
from jaxar.data import image_folder
from jaxar.data.images import read_image

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("emerald", "ruby")


def make_folder(root: pathlib.Path, per_class=6, corrupt=True) -> pathlib.Path:
    """Non-square PNGs in one sub-folder per class (green / red), plus one corrupt file.

    Each image is 12 x 18 (H x W): a centre 12 x 12 square in the class colour
    between 3-pixel blue bands on the left and right, which the centre crop removes.
    """
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            image = np.zeros((12, 18, 3), np.uint8)
            image[..., 2] = 255
            image[:, 3:15] = 0
            image[:, 3:15, 1 - label] = 200 + rng.integers(0, 40)
            Image.fromarray(image).save(root / name / f"{k}.png")
    if corrupt:
        (root / "ruby" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "ruby" / "notes.txt").write_text("not an image")
    return root


def folder_cfg(path, shape=(4, 4, 3), num_levels=256, **data_overrides):
    return ml_collections.ConfigDict({
        "seed": 0,
        "data": {"source": "folder", "name": "gems", "path": str(path), "shape": shape,
                 "num_levels": num_levels, "labels_from_subfolders": True,
                 "test_fraction": 0.25, **data_overrides},
    })


def test_crops_resizes_labels_and_splits_deterministically(tmp_path):
    root = make_folder(tmp_path / "gems")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\).*broken\.png"):
        train, test = data.load_splits(folder_cfg(root))
    assert (len(train), len(test)) == (9, 3)  # 12 readable images, a quarter for testing
    assert train.num_classes == test.num_classes == 2
    batch = train.get(np.arange(len(train)))
    x, labels = batch["x"], batch["labels"]
    assert x.shape == (9, 4, 4, 3) and x.dtype == np.int32
    assert (x[..., 2] < 10).all()  # the blue side bands were cropped away
    green = x[..., 1].mean(axis=(1, 2)) > 150
    np.testing.assert_array_equal(green, labels == 0)  # emerald is class 0, ruby class 1
    again, _ = data.load_splits(folder_cfg(root))  # cached, same split
    np.testing.assert_array_equal(again.get(np.arange(9))["x"], x)


def test_num_levels_reduction_and_grey_images(tmp_path):
    root = make_folder(tmp_path / "gems", corrupt=False)
    train, _ = data.load_splits(folder_cfg(root, shape=(2, 3, 1), num_levels=32,
                                           labels_from_subfolders=False))
    batch = train.get(np.arange(len(train)))
    assert batch["x"].shape == (len(train), 2, 3, 1) and batch["x"].max() < 32
    assert train.num_classes == 0 and (batch["labels"] == 0).all()


@pytest.mark.parametrize(
    "setup,overrides,match",
    [
        ("empty", {}, "holds no image file"),
        ("missing", {}, "is not a folder"),
        ("gems", {"shape": (16, 16)}, r"expected \(height, width, 1\)"),
        ("gems", {"shape": (8, 8, 4)}, r"expected \(height, width, 1\)"),
        ("gems", {"test_fraction": 1.0}, "test_fraction"),
        ("loose", {}, "needs every image inside a sub-folder"),
        ("unreadable", {"labels_from_subfolders": False}, "holds no readable image"),
    ],
)
def test_errors_name_the_problem(tmp_path, setup, overrides, match):
    root = tmp_path / setup
    if setup == "empty":
        root.mkdir()
    elif setup == "gems":
        make_folder(root, corrupt=False)
    elif setup == "loose":
        make_folder(root, corrupt=False)
        Image.new("RGB", (5, 5)).save(root / "loose.png")
    elif setup == "unreadable":
        root.mkdir()
        (root / "a.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match=match):
        if setup == "unreadable":
            with pytest.warns(UserWarning, match="skipped 1"):
                data.load_splits(folder_cfg(root, **overrides))
        else:
            data.load_splits(folder_cfg(root, **overrides))


def test_smoke_trains_on_a_folder_of_pngs(tmp_path):
    root = make_folder(tmp_path / "gems")
    # The data path is under test here: the cheapest colour model trains on it.
    cfg = jaxar.load_config(str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke"))
    cfg.data.update(source="folder", path=str(root), labels_from_subfolders=True,
                    test_fraction=0.25, shape=(8, 8, 3), num_train=None, num_test=None)
    cfg.model.update(num_classes=2, features=6, head_features=6)  # 3 colour groups
    cfg.train.update(num_steps=3, batch_size=4, init_batch_size=4, eval_every_steps=3,
                     sample_every_steps=3, checkpoint_every_steps=2, log_every_steps=1)
    cfg.eval.batch_size = 4
    with pytest.warns(UserWarning, match="skipped 1"):
        state = jaxar.train_and_evaluate(cfg, tmp_path / "run")
    assert int(state.step) == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["step"] for r in rows if "train/bpd" in r] == [1, 2, 3]
    assert np.isfinite([r["eval/bpd"] for r in rows if "eval/bpd" in r]).all()
    assert (tmp_path / "run" / "samples_3.png").is_file()
    # Step 3's batch was read ahead while step 2 ran: step 2's checkpoint holds the
    # position after two batches, where a resumed run continues.
    saved = tmp_path / "run" / "checkpoints" / "2" / "data" / "metadata"
    with pytest.warns(UserWarning, match="skipped 1"):
        train, _ = data.load_splits(cfg)
    iterator = data.TrainIterator(train, 4, seed=0, process_index=0, process_count=1)
    next(iterator), next(iterator)
    assert json.loads(saved.read_text()) == iterator.get_state()
    index = json.loads((tmp_path / "run" / image_folder.INDEX_FILE).read_text())["files"]
    assert len(index) == 13 and index["ruby/broken.png"][2] is False  # the run's own index


def test_16_bit_grey_pngs_are_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL opens a 16-bit grey PNG as mode "I;16"; its own conversion to "L" clips at 255."""
    root = tmp_path / "deep"
    root.mkdir()
    levels = np.array([0, 257, 32896, 65535], np.uint16)  # 8-bit 0, 1, 128, 255 exactly
    for k in range(4):
        image = np.full((4, 4), levels[k], np.uint16)
        image[0, 0] = 65535 - levels[k]
        Image.fromarray(image).save(root / f"{k}.png")
    with Image.open(root / "0.png") as image:
        assert image.mode == "I;16"
    for channels in (1, 3):
        train, test = data.load_splits(folder_cfg(root, shape=(4, 4, channels),
                                                  labels_from_subfolders=False))
        x = np.concatenate([s.get(np.arange(len(s)))["x"] for s in (train, test)])
        assert sorted(int(np.median(v)) for v in x) == [0, 1, 128, 255]
        for v in x:  # the corner keeps its complement: nothing was clipped to white
            assert int(v[0, 0, 0]) + int(np.median(v)) in (254, 255, 256)


# --- lazy decoding and the folder index -------------------------------------------------------


def eager_splits(root: pathlib.Path, shape, test_fraction, readable):
    """(train, test) images as the folder source defines them: the readable files ranked by
    the SHA-1 of their relative path, the lowest hashes the test split, each decoded."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png") if readable(p))
    files.sort(key=lambda f: hashlib.sha1(f.encode()).digest()[:8])
    num_test = max(1, round(len(files) * test_fraction))
    decode = lambda names: np.stack([read_image(root / f, shape) for f in names])
    return decode(files[num_test:]), decode(files[:num_test])


@pytest.mark.parametrize("shape", [(4, 4, 3), (3, 5, 1)])
def test_lazy_reads_equal_the_eager_decode_bit_for_bit(tmp_path, shape):
    root = make_folder(tmp_path / "gems")
    with pytest.warns(UserWarning, match="skipped 1"):
        splits = data.load_splits(folder_cfg(root, shape=shape))
    expected = eager_splits(root, shape, 0.25, lambda p: p.name != "broken.png")
    for split, images in zip(splits, expected, strict=True):
        assert isinstance(split.source, image_folder.FolderSource)
        np.testing.assert_array_equal(split.get(np.arange(len(split)))["x"], images)
        np.testing.assert_array_equal(split[2]["x"], images[2])  # one record


def test_grain_worker_processes_decode_the_same_batches(tmp_path):
    root = make_folder(tmp_path / "gems", corrupt=False)
    train, _ = data.load_splits(folder_cfg(root))
    in_process = data.TrainIterator(train, 3, seed=1, process_index=0, process_count=1)
    worker = data.TrainIterator(train, 3, seed=1, process_index=0, process_count=1,
                                num_workers=1)
    try:
        for _ in range(5):  # crosses an epoch (3 batches of the 9 training images)
            expected, got = next(in_process), next(worker)
            for key in ("x", "labels"):
                np.testing.assert_array_equal(got[key], expected[key])
    finally:
        worker.close()


def fresh_process():
    """Forgets what this process has indexed, as a new run would."""
    image_folder._load.cache_clear()
    image_folder._MEMORY_INDEX.clear()


@pytest.mark.parametrize("in_workdir", [True, False])
def test_index_rechecks_only_new_and_changed_files(tmp_path, monkeypatch, in_workdir):
    root = make_folder(tmp_path / "gems")
    workdir = tmp_path / "run" if in_workdir else None
    if workdir:
        workdir.mkdir()
    checked = []
    readable = image_folder._readable
    monkeypatch.setattr(image_folder, "_readable",
                        lambda file: checked.append(file.name) or readable(file))

    def load():
        with pytest.warns(UserWarning, match="skipped 1"):
            return data.load_splits(folder_cfg(root), workdir=workdir)

    load()
    assert len(checked) == 13  # 12 images and the corrupt one; notes.txt is no image
    if workdir:
        stored = json.loads((workdir / image_folder.INDEX_FILE).read_text())
        assert stored["root"] == str(root.resolve())
        entry = stored["files"]["ruby/broken.png"]
        stat = (root / "ruby" / "broken.png").stat()
        assert entry == [stat.st_mtime_ns, stat.st_size, False]
        assert sum(e[2] for e in stored["files"].values()) == 12
        fresh_process()  # a new run: the index comes from the workdir
        checked.clear()
        load()
        assert checked == []
    Image.new("RGB", (6, 6), (0, 255, 0)).save(root / "emerald" / "new.png")
    Image.new("RGB", (7, 7), (0, 250, 0)).save(root / "emerald" / "0.png")  # changed
    (root / "ruby" / "1.png").unlink()
    if workdir:
        fresh_process()
    checked.clear()
    train, test = load()
    assert sorted(checked) == ["0.png", "new.png"]
    files = train.source.files + test.source.files
    assert len(files) == 12 and "emerald/new.png" in files and "ruby/1.png" not in files
    if workdir:
        stored = json.loads((workdir / image_folder.INDEX_FILE).read_text())["files"]
        assert "ruby/1.png" not in stored and stored["emerald/new.png"][2] is True


def test_a_file_that_passes_the_index_but_cannot_be_decoded_is_named(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for k in range(3):
        Image.new("RGB", (6, 6), (40 * k, 0, 0)).save(root / f"{k}.png")
    Image.new("RGB", (16, 16), (0, 0, 90)).save(root / "cut.jpg")
    (root / "cut.jpg").write_bytes((root / "cut.jpg").read_bytes()[:-2])  # no end marker
    assert image_folder._readable(root / "cut.jpg")  # verify() does not decode a JPEG
    splits = data.load_splits(folder_cfg(root, labels_from_subfolders=False))
    split = next(s for s in splits if "cut.jpg" in s.source.files)
    with pytest.raises(ValueError, match=r"'cut\.jpg' passed the index's check but cannot "
                                         r"be decoded"):
        split.get(np.arange(len(split)))

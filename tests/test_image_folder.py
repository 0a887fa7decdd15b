"""Image folders as a data source: cropping, splits, labels, errors, and training on one."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

import jaxar
from jaxar import data

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
    cfg.train.update(num_steps=2, batch_size=4, init_batch_size=4, eval_every_steps=2,
                     sample_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)
    cfg.eval.batch_size = 4
    with pytest.warns(UserWarning, match="skipped 1"):
        state = jaxar.train_and_evaluate(cfg, tmp_path / "run")
    assert int(state.step) == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["step"] for r in rows if "train/bpd" in r] == [1, 2]
    assert np.isfinite([r["eval/bpd"] for r in rows if "eval/bpd" in r]).all()
    assert (tmp_path / "run" / "samples_2.png").is_file()


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

"""Image folders as a data source: `data.source = "folder"`, `data.path = DIR`.

Every image file under `data.path` (any depth; PNG, JPEG, BMP, GIF, TIFF,
WebP) is decoded once, converted to RGB (or grey for `data.shape[-1] == 1`),
centre-cropped to the aspect ratio of `data.shape` and resized to it. The
split is deterministic and stable when files are added: files are ranked by
a hash of their path relative to `data.path`, and the first
`max(1, round(n * data.test_fraction))` (default 0.1) are the test split.
Both splits are stored in that hash order, so the first training images (the
data-dependent init batch) are a mix of classes, not the first sub-folder.

With `data.labels_from_subfolders = True` the class of an image is the index
of its top-level sub-folder in sorted order (e.g. `gems/ruby/1.png` ->
"ruby"), and `Split.num_classes` is the number of sub-folders holding images.

Files that cannot be decoded are skipped with one warning that counts them.
An empty folder, a missing one, or a `data.shape` that is not an image shape
`(H, W, 1 or 3)` raise a ValueError. Values are 8-bit (256 levels) and
go through `data.py`'s reduction to `data.num_levels` like every source;
16-bit images are scaled to 8 bits (v * 255 / 65535, rounded).
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxar.data.sources import ArraySource

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_TEST_FRACTION = 0.1


def folder_source(data, split: str) -> ArraySource:
    """The "train" or "test" split of the folder described by the `cfg.data` ConfigDict."""
    path = data.get("path", None)
    if not path:
        raise ValueError("data.path must name a folder of images when data.source='folder'")
    shape = tuple(data.shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(
            f"data.shape={shape} does not fit an image folder: expected (height, width, 1) "
            f"for grey or (height, width, 3) for colour images"
        )
    fraction = data.get("test_fraction", DEFAULT_TEST_FRACTION)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.test_fraction must lie in (0, 1), got {fraction!r}")
    root = pathlib.Path(path).resolve()
    files = _image_files(root)
    # Sizes and modification times: the cache below reloads a folder whose files changed.
    stamps = tuple((f, (root / f).stat().st_mtime_ns, (root / f).stat().st_size) for f in files)
    labels_from_subfolders = bool(data.get("labels_from_subfolders", False))
    splits = _load(str(root), stamps, shape, labels_from_subfolders, float(fraction))
    return splits[("train", "test").index(split)]


@functools.lru_cache(maxsize=2)
def _load(root: str, stamps, shape, labels_from_subfolders: bool, test_fraction: float):
    """(train, test) ArraySources; cached so that both splits decode the folder once."""
    files = [rel for rel, _, _ in stamps]
    class_names = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    if labels_from_subfolders:
        loose = [str(f) for f in files if len(f.parts) == 1]
        if loose:
            raise ValueError(
                f"data.labels_from_subfolders=True needs every image inside a sub-folder of "
                f"data.path={root!r}; found {len(loose)} at the top level, e.g. {loose[0]!r}"
            )
    images, labels, kept, skipped = [], [], [], []
    for rel in files:
        try:
            images.append(_decode(pathlib.Path(root) / rel, shape))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            skipped.append(str(rel))  # PIL raises any of these for corrupt files
            continue
        kept.append(rel)
        labels.append(class_names.index(rel.parts[0]) if labels_from_subfolders else 0)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) under data.path={root!r}: "
            f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            stacklevel=2,
        )
    if not images:
        raise ValueError(f"data.path={root!r} holds no readable image ({len(skipped)} skipped)")
    is_test = _test_mask(kept, test_fraction)
    if is_test.all():
        raise ValueError(f"data.path={root!r} holds only {len(kept)} readable image(s): too "
                         f"few for a train and a test split")
    # Stored in hash order, not path order: folders are often sorted by class, and the
    # first examples of the train split are the data-dependent init batch.
    order = np.argsort(_path_hashes(kept), kind="stable")
    images_N, labels_N = np.stack(images)[order], np.asarray(labels, np.int32)[order]
    is_test = is_test[order]
    num_classes = len(class_names) if labels_from_subfolders else 0
    return tuple(
        ArraySource(images_N[mask], labels_N[mask], num_classes, levels=256)
        for mask in (~is_test, is_test)
    )


def _image_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Image files under root (relative paths, sorted), or a ValueError if there are none."""
    if not root.is_dir():
        raise ValueError(f"data.path={str(root)!r} is not a folder")
    files = sorted(
        p.relative_to(root) for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES
    )
    if not files:
        raise ValueError(
            f"data.path={str(root)!r} holds no image file (looked for {', '.join(SUFFIXES)})"
        )
    return files


def _decode(file: pathlib.Path, shape) -> np.ndarray:
    """uint8 [H, W, C]: the largest centred crop with the target aspect ratio, resized."""
    height, width, channels = shape
    with Image.open(file) as image:
        if image.mode == "I" or image.mode.startswith("I;16"):
            image = _grey_to_8_bits(image)
        image = image.convert("RGB" if channels == 3 else "L")
        w, h = image.size
        crop_w, crop_h = min(w, h * width // height), min(h, w * height // width)
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        image = image.crop((left, top, left + max(crop_w, 1), top + max(crop_h, 1)))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(image, np.uint8).reshape(height, width, channels)


def _grey_to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit grey image (PIL mode "I;16*", or "I" as PIL opens some 16-bit files) as
    8-bit "L", scaled: v * 255 / 65535 rounded (PIL's own conversion clips at 255, so
    nearly every pixel would come out white)."""
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _path_hashes(files: list[pathlib.Path]) -> np.ndarray:
    """A stable pseudo-random key per relative path (uint64)."""
    digest = [hashlib.sha1(rel.as_posix().encode()).digest()[:8] for rel in files]
    return np.array([int.from_bytes(d, "big") for d in digest], np.uint64)


def _test_mask(files: list[pathlib.Path], test_fraction: float) -> np.ndarray:
    """True for the files of the test split: the lowest path hashes, at least one."""
    rank = np.argsort(np.argsort(_path_hashes(files), kind="stable"), kind="stable")
    return rank < max(1, round(len(files) * test_fraction))

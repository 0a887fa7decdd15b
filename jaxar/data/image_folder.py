"""Image folders as a data source: `data.source = "folder"`, `data.path = DIR`.

Every image file under `data.path` (any depth; PNG, JPEG, BMP, GIF, TIFF,
WebP) is served converted to RGB (or grey for `data.shape[-1] == 1`),
centre-cropped to the aspect ratio of `data.shape` and resized to it. The
split is deterministic and stable when files are added: files are ranked by
a hash of their path relative to `data.path`, and the first
`max(1, round(n * data.test_fraction))` (default 0.1) are the test split.
Both splits are stored in that hash order, so the first training images (the
data-dependent init batch) are a mix of classes, not the first sub-folder.

With `data.labels_from_subfolders = True` the class of an image is the index
of its top-level sub-folder in sorted order (e.g. `gems/ruby/1.png` ->
"ruby"), and `Split.num_classes` is the number of sub-folders holding images.

Images are decoded lazily: building the splits only indexes the folder, and
`FolderSource.get` (in the training process or in grain's worker processes)
opens, crops and resizes the files it is asked for. The index holds each
file's (relative path, mtime_ns, size) and whether it is readable, which is a
cheap check (PIL's `Image.open` + `verify`, no decode). With a workdir it is
cached in `<workdir>/folder_index.json` (`INDEX_FILE`), and a later run checks
only new or changed files again (every file is `stat`-ed; removed files drop
out); without one it is kept in memory for the process.

Unreadable files are skipped with one warning that counts them. A file that
passes the check but fails to decode when read (`verify` does not decompress)
raises a ValueError naming it. An empty folder, a missing one, or a
`data.shape` that is not an image shape `(H, W, 1 or 3)` raise a ValueError.
Files are decoded by `jaxar.data.images.read_image`, the decoding every image
reader shares (bit depth, palette and alpha, the crop): values are 8-bit (256
levels) and go through the pipeline's reduction to `data.num_levels` like every
source; 16-bit images are scaled to 8 bits (v * 255 / 65535, rounded).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import stat
import warnings

import numpy as np
from PIL import Image

from jaxar import files as output_files
from jaxar import settings
from jaxar.data import images
from jaxar.data.sources import RandomAccess

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INDEX_FILE = "folder_index.json"
# The index of each folder indexed without a workdir: {root: {relative path: entry}}.
_MEMORY_INDEX: dict[str, dict[str, list]] = {}


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSource(RandomAccess):
    """The image files of one split (paths relative to `root`, in hash order) and their
    labels, decoded when read; picklable, so grain worker processes decode in parallel."""

    root: str
    files: tuple[str, ...]
    labels: np.ndarray
    num_classes: int
    shape: tuple[int, int, int]
    levels: int = 256

    def __len__(self) -> int:
        return len(self.files)

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Returns dict(image=uint8 [n, *shape], label=int32 [n]): those files, decoded."""
        indices = np.asarray(indices, np.int64)
        image_N = np.empty((len(indices), *self.shape), np.uint8)
        for row, index in enumerate(indices.tolist()):
            try:
                image_N[row] = images.read_image(pathlib.Path(self.root) / self.files[index],
                                                 self.shape)
            except images.UnreadableImage as err:
                raise ValueError(
                    f"data.path={self.root!r}: {self.files[index]!r} passed the index's check "
                    f"but cannot be decoded ({err.detail}); remove or replace it") from err
        return {"image": image_N, "label": self.labels[indices]}


def folder_source(data, split: str, workdir=None) -> FolderSource:
    """The "train" or "test" split of the folder described by the `cfg.data` ConfigDict;
    the folder's index is cached in `workdir` (see the module docstring), if given."""
    given = settings.DataSettings.of(data)
    path = given.path
    if not path:
        raise ValueError("data.path must name a folder of images when data.source='folder'")
    shape = tuple(data.shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(
            f"data.shape={shape} does not fit an image folder: expected (height, width, 1) "
            f"for grey or (height, width, 3) for colour images"
        )
    fraction = given.test_fraction
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.test_fraction must lie in (0, 1), got {fraction!r}")
    root = pathlib.Path(path).resolve()
    index_file = None if workdir is None else str(pathlib.Path(workdir).resolve() / INDEX_FILE)
    labels_from_subfolders = bool(given.labels_from_subfolders)
    splits = _load(str(root), _stamps(root), shape, labels_from_subfolders, float(fraction),
                   index_file)
    return splits[("train", "test").index(split)]


@functools.lru_cache(maxsize=2)
def _load(root: str, stamps, shape, labels_from_subfolders: bool, test_fraction: float,
          index_file: str | None):
    """(train, test) FolderSources; cached so that both splits share one index."""
    files = [rel for rel, _, _ in stamps]  # posix paths relative to root
    class_names = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    if labels_from_subfolders:
        loose = [f for f in files if "/" not in f]
        if loose:
            raise ValueError(
                f"data.labels_from_subfolders=True needs every image inside a sub-folder of "
                f"data.path={root!r}; found {len(loose)} at the top level, e.g. {loose[0]!r}"
            )
    readable = _index(root, stamps, index_file)
    kept = [f for f, ok in zip(files, readable, strict=True) if ok]
    skipped = [f for f, ok in zip(files, readable, strict=True) if not ok]
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) under data.path={root!r}: "
            f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            stacklevel=2,
        )
    if not kept:
        raise ValueError(f"data.path={root!r} holds no readable image ({len(skipped)} skipped)")
    hashes = _path_hashes(kept)
    is_test = _test_mask(hashes, test_fraction)
    if is_test.all():
        raise ValueError(f"data.path={root!r} holds only {len(kept)} readable image(s): too "
                         f"few for a train and a test split")
    # Stored in hash order, not path order: folders are often sorted by class, and the
    # first examples of the train split are the data-dependent init batch.
    order = np.argsort(hashes, kind="stable")
    class_of = {name: k for k, name in enumerate(class_names)}
    labels = [class_of[f.split("/", 1)[0]] if labels_from_subfolders else 0 for f in kept]
    files_N, labels_N = np.array(kept, object)[order], np.asarray(labels, np.int32)[order]
    is_test = is_test[order]
    num_classes = len(class_names) if labels_from_subfolders else 0
    return tuple(
        FolderSource(root, tuple(files_N[mask]), labels_N[mask], num_classes, shape)
        for mask in (~is_test, is_test)
    )


def _stamps(root: pathlib.Path) -> tuple[tuple[str, int, int], ...]:
    """(relative posix path, mtime_ns, size) of every image file under root, sorted by
    path; a ValueError if there is none. Symlinked folders and folders that cannot be
    listed are not entered."""
    if not root.is_dir():
        raise ValueError(f"data.path={str(root)!r} is not a folder")
    stamps, folders = [], [("", str(root))]
    while folders:
        prefix, folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except PermissionError:
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                folders.append((rel + "/", entry.path))
            elif os.path.splitext(entry.name)[1].lower() in SUFFIXES:
                try:
                    info = entry.stat()  # of the file a link points to
                except OSError:  # a dangling link: not a file
                    continue
                if stat.S_ISREG(info.st_mode):
                    stamps.append((rel, info.st_mtime_ns, info.st_size))
    if not stamps:
        raise ValueError(
            f"data.path={str(root)!r} holds no image file (looked for {', '.join(SUFFIXES)})"
        )
    return tuple(sorted(stamps, key=lambda stamp: stamp[0].split("/")))  # pathlib's order


def _index(root: str, stamps, index_file: str | None) -> list[bool]:
    """Whether each file of `stamps` is readable: from the cached index where its mtime and
    size are unchanged, else checked now. The index is then rewritten (if it changed)."""
    cached = _read_index(root, index_file)
    entries = {}
    for rel, mtime, size in stamps:
        entry = cached.get(rel)
        if entry is None or entry[:2] != [mtime, size]:
            entry = [mtime, size, _readable(pathlib.Path(root) / rel)]
        entries[rel] = entry
    if entries != cached:
        _write_index(root, index_file, entries)
    return [entries[rel][2] for rel, _, _ in stamps]


def _read_index(root: str, index_file: str | None) -> dict[str, list]:
    """{relative path: [mtime_ns, size, readable]} of the folder's last index ({}: none)."""
    if index_file is None:
        return _MEMORY_INDEX.get(root, {})
    try:
        stored = json.loads(pathlib.Path(index_file).read_text())
    except (OSError, ValueError):  # none yet, or unreadable: the folder is indexed again
        return {}
    if not isinstance(stored, dict) or stored.get("root") != root:
        return {}  # the workdir's data.path changed
    return stored.get("files", {})


def _write_index(root: str, index_file: str | None, entries: dict[str, list]) -> None:
    """Keeps the index in memory, or writes it atomically: another process sharing the
    workdir may read it at the same time."""
    if index_file is None:
        _MEMORY_INDEX[root] = entries
        return
    output_files.write_text(index_file, json.dumps({"root": root, "files": entries}))


def _readable(file: pathlib.Path) -> bool:
    """Whether PIL identifies the file and its structure checks out (no decode)."""
    try:
        with Image.open(file) as image:
            image.verify()
    except images.UNREADABLE:
        return False
    return True


def _path_hashes(files: list[str]) -> np.ndarray:
    """A stable pseudo-random key per relative posix path (uint64)."""
    digest = [hashlib.sha1(rel.encode()).digest()[:8] for rel in files]
    return np.array([int.from_bytes(d, "big") for d in digest], np.uint64)


def _test_mask(hashes: np.ndarray, test_fraction: float) -> np.ndarray:
    """True for the files of the test split: the lowest path hashes, at least one."""
    rank = np.argsort(np.argsort(hashes, kind="stable"), kind="stable")
    return rank < max(1, round(len(hashes) * test_fraction))

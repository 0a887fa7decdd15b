"""What a run writes for people to read: metrics.jsonl, TensorBoard events, sample grids."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from PIL import Image

from jaxar import files


class MetricsWriter:
    """Appends one JSON object per logged step to `metrics.jsonl`, mirrored to TensorBoard.

    Only process 0 writes; the other hosts get a writer that does nothing. A run that
    resumes from step `start_step` first drops the rows of later steps (logged by the
    interrupted run after its last checkpoint) and has TensorBoard purge those steps,
    so every step appears once. Write errors (OSError) are raised, and a row that could
    not be written whole (a full disk) is cut off again: the file keeps its earlier rows.
    """

    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 (heavy import, process 0 only)

            tb_dir = pathlib.Path(workdir) / "tensorboard"
            resumed = drop_metrics_after(workdir, start_step) or (
                tb_dir.is_dir() and any(tb_dir.glob("events.*")))
            # purge_step: TensorBoard hides the earlier files' events from this step on.
            self._tb = SummaryWriter(str(tb_dir), purge_step=start_step + 1 if resumed else None)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("ab") as f:
            size = f.tell()
            try:
                f.write((json.dumps(row) + "\n").encode())
                f.flush()
            except OSError:
                f.truncate(size)
                raise
        for name, value in metrics.items():
            self._tb.add_scalar(name, float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            tb.close()


def drop_metrics_after(workdir: str | pathlib.Path, step: int) -> bool:
    """Rewrites metrics.jsonl without its rows of steps after `step` (and any line cut
    short by a kill), atomically; True if the file existed."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return False
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += line.strip() != ""
    if dropped:
        files.write_text(path, "".join(line + "\n" for line in kept))
    return True


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def image_grid(x: np.ndarray, num_levels: int, image_shape=None, cols: int | None = None):
    """Tiles integer samples `[N, *event]` into one uint8 image `[rows*H, cols*W, C]`.

    Sequences are shown as images of `image_shape` (e.g. (28, 28, 1) for a
    flattened digit); values are scaled from [0, num_levels) to [0, 255].
    """
    x = np.asarray(x)
    if image_shape is not None:
        x = x.reshape(x.shape[0], *image_shape)
    if x.ndim == 2:  # [N, L] without an image shape: one row per sequence
        x = x[:, None, :, None]
    if x.ndim == 3:
        x = x[..., None]
    n, h, w, c = x.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = (x.astype(np.float32) * 255.0 / (num_levels - 1)).round().astype(np.uint8)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 128, np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = 1 + r * (h + 1), 1 + q * (w + 1)
        grid[top : top + h, left : left + w] = pixels[k]
    return grid


def save_image_grid(path, x, num_levels, image_shape=None, cols=None, scale: int = 4) -> None:
    """Writes `image_grid(...)` as a PNG, nearest-neighbour upscaled `scale` times
    (atomically: `jaxar.files`)."""
    grid = image_grid(x, num_levels, image_shape, cols)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with files.atomic_write(path, "wb") as f:
        image.save(f, format="PNG")

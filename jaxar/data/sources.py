"""What every source serves, and the in-memory source generated or stored datasets use.

A source has `levels` (values lie in [0, levels)), `shape` (the native event shape),
`num_classes` (0: no labels), `len(source)` and a batched `get(indices)` ->
dict(image=[n, *shape], label=int32 [n], and "cond" if it serves a conditioning map).
`RandomAccess` adds `source[i]` -> one record, so a source (and a `Split`) is a grain
`RandomAccessDataSource`: `grain.MapDataset.source(split)` works.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np


class RandomAccess:
    """grain's `RandomAccessDataSource` protocol over a batched `get(indices)`:
    `source[i]` is row 0 of `get([i])`, e.g. dict(image=[*shape], label=int32 scalar).

    The training pipeline keeps reading through `get`, which is faster: per record,
    `split[i]` pays the checks and reduction of `Split.get` and grain's stacking, and
    ArrayRecord one read call, for what `get` does once per batch
    (`benchmarks/input_pipeline.py` times both; figures in docs/guides/data.md).
    """

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside [0, {len(self)})")
        return {key: value[0] for key, value in self.get(np.array([index])).items()}


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource(RandomAccess):
    """An in-memory source: images [n, *shape] with values in [0, levels), labels [n] and,
    optionally, a conditioning map per example (`cond` [n, ...], e.g. coarser codes)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    levels: int
    cond: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        """The native event shape."""
        return tuple(self.images.shape[1:])

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Returns dict(image=[n, *shape], label=int32 [n], and cond if any) for the rows."""
        rows = {"image": self.images[indices], "label": self.labels[indices].astype(np.int32)}
        if self.cond is not None:
            rows["cond"] = self.cond[indices]
        return rows

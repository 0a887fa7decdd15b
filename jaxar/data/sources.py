"""The in-memory source every generated or decoded dataset is served from."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArraySource:
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

"""Generation orders: the step at which each dimension (or pixel) is generated.

One table for every family that lets `model.ordering` choose; each family offers the
orderings it is exact for (`ORDERINGS` of its module):

* raster: row by row, left to right, a pixel's channels in order.
* zigzag: images `[H, W, C]`; pixels along anti-diagonals i + j = s, alternating
  direction as in JPEG ((0,0), (0,1), (1,0), (2,0), (1,1), (0,2), ...).
* random: a fixed permutation drawn from an `np.random.Generator` (the family's seed).
* custom: `pixel_order` lists the position generated at each step, a permutation of
  range(H * W) (flat pixel indices i * W + j) for images, of range(L) for sequences.

An image's unit is the pixel (its channels follow in order) except where a family
orders single dimensions (`random` over every dimension: `dimension_steps`).
"""

from __future__ import annotations

import numpy as np

NAMES = ("raster", "zigzag", "random", "custom")


def position_steps(name: str, shape: tuple[int, ...], pixel_order: tuple[int, ...] = (),
                   rng: np.random.Generator | None = None, choices=NAMES) -> np.ndarray:
    """Generation step of every position of `shape` (`(H, W)` pixels, or `(L,)`), int32.

    `choices`: the orderings the caller offers (others are a `ValueError`).
    """
    if name not in choices:
        raise ValueError(f"model.ordering must be one of {tuple(choices)}, got {name!r}")
    size = int(np.prod(shape))
    if name == "raster":
        order = np.arange(size)
    elif name == "zigzag":
        if len(shape) != 2:
            raise ValueError(
                f"model.ordering='zigzag' needs an image data.shape (H, W, C), got {shape}")
        i, j = np.indices(shape).reshape(2, -1)
        diagonal = i + j
        # Along odd diagonals i increases (down-left), along even ones it decreases.
        order = np.lexsort((np.where(diagonal % 2 == 1, i, -i), diagonal))
    elif name == "random":
        order = rng.permutation(size)
    else:
        order = np.asarray(pixel_order, np.int64)
        if sorted(order.tolist()) != list(range(size)):
            raise ValueError(
                f"model.pixel_order must be a permutation of range({size}) (flat positions "
                f"in generation order), got {list(pixel_order)[:8]}..."
            )
    steps = np.empty(size, np.int32)
    steps[order] = np.arange(size)
    return steps.reshape(shape)


def dimension_steps(name: str, event_shape: tuple[int, ...], pixel_order: tuple[int, ...] = (),
                    rng: np.random.Generator | None = None, choices=NAMES) -> np.ndarray:
    """Generation step of every dimension of `event_shape`, int32.

    Images `[H, W, C]`: a pixel's channels in order at consecutive steps, except
    `random`, a permutation of every dimension; other shapes: one position per
    dimension.
    """
    size = int(np.prod(event_shape))
    if name == "random" and name in choices:
        return rng.permutation(size).reshape(event_shape).astype(np.int32)
    if len(event_shape) != 3:
        if name == "zigzag" and name in choices:
            raise ValueError(f"model.ordering='zigzag' needs an image data.shape (H, W, C), "
                             f"got {event_shape}")
        return position_steps(name, (size,), pixel_order, rng, choices).reshape(event_shape)
    height, width, channels = event_shape
    pixels = position_steps(name, (height, width), pixel_order, rng, choices)
    return (pixels[..., None] * channels + np.arange(channels)).astype(np.int32)


def check_fields(f: dict) -> None:
    """`model.pixel_order` given only with `model.ordering='custom'`."""
    if f["ordering_name"] != "custom" and f["pixel_order"]:
        raise ValueError("model.pixel_order is read only with model.ordering='custom'")


def is_raster(steps: np.ndarray) -> bool:
    """Whether `steps` is raster order."""
    return bool(np.array_equal(steps.ravel(), np.arange(steps.size)))

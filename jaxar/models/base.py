"""The model protocol: what every jaxar model provides, and its incremental decoder.

A jaxar model is a `flax.linen.Module` subclassing `Model`, registered by name in
`jaxar.models.REGISTRY`. The trainer, the evaluator and the samplers speak only
this protocol; none of them knows a model's name or its parameters' names.

Fields every model declares: `event_shape` (the shape of one example: `[H, W, C]`
images, `[L]` sequences), `num_levels` (values per dimension) and `num_classes`
(0: unconditional). Everything else has a default here:

* `likelihood` (property): the `jaxar.distributions` likelihood of the outputs.
* `__call__(x, labels=None, cond=None, train=False)`: likelihood parameters
  `[B, *group_shape, F]`; `group_shape == event_shape` for per-dimension
  likelihoods, `event_shape[:-1]` for one over a pixel's channels (`dmol`).
* `ordering()`: the generation step of every dimension (raster by default).
* `cond_shape` / `derive_cond(x)`: the shape of a spatial or temporal
  conditioning map and how it is computed from a training batch (None: none).
* `training_kwargs(rng)`: extra `__call__` arguments drawn per training step
  (MADE's mask set); `ensemble_log_prob(...)`: a test-time ensemble over them,
  of at most `ensemble_size` members.
* `decoder(variables, labels, cond, batch)`: the model's `Decoder` for cached
  sampling. Every model has one; `jaxar.sampling` runs it in its one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import numpy as np


class Decoder(NamedTuple):
    """A model's incremental decoder: what `jaxar.sampling`'s loop runs.

    The loop walks the generation steps `t = 0 .. D-1` of `generation_order(model)`
    in calls of `dims_per_step` steps, grouped in blocks of `steps_per_block` calls:

        for b in blocks:  cache = start_block(cache, x, b)          (if given)
            for s in calls of block b:  params_BF, cache = step(cache, x, s)
                for t in s * k .. s * k + k - 1:  draw dimension order[t] from params_BF

    step(cache, x_flat_BD, s) -> (params `[B, F]`, cache): the likelihood parameters
      of the dimensions of call s, given x (flat, `[B, D]`) in which every dimension
      generated before them is written. With `dims_per_step > 1` the call's
      dimensions share one parameter vector (a likelihood over a pixel's channels,
      whose network output does not see the pixel).
    start_block(cache, x_flat_BD, b) -> cache: work done once per block (a row of
      an image) before its first call, e.g. a vertical stack's row.
    skip_known: the loop may skip calls whose dimensions are known in every sample
      (only for decoders whose cache needs no update there, e.g. the naive one).
    """

    cache: Any
    step: Callable
    dims_per_step: int = 1
    steps_per_block: int | None = None  # None: all calls form one block
    start_block: Callable | None = None
    skip_known: bool = False


def raster_ordering(event_shape: tuple[int, ...]) -> np.ndarray:
    """Generation step of every dimension in raster (row-major) order."""
    return np.arange(int(np.prod(event_shape))).reshape(event_shape)


def generation_order(model) -> np.ndarray:
    """Flat index of the dimension generated at each step, int32 `[D]`."""
    return np.argsort(np.asarray(model.ordering()).ravel(), kind="stable").astype(np.int32)


def is_raster(model) -> bool:
    order = generation_order(model)
    return bool(np.array_equal(order, np.arange(order.shape[0])))


class Model(nn.Module):
    """Base class of every jaxar model: the protocol's defaults (see the module docstring)."""

    # Not dataclass fields (no annotation): models without conditioning maps keep None.
    cond_shape = None

    @property
    def likelihood(self):
        raise NotImplementedError

    def ordering(self) -> np.ndarray:
        return raster_ordering(self.event_shape)

    @nn.nowrap
    def derive_cond(self, x):
        """The conditioning input the model trains on, computed from a batch x; None if none."""
        del x
        return None

    @nn.nowrap
    def training_kwargs(self, rng) -> dict:
        """Extra `__call__` arguments of one training step (drawn with `rng`)."""
        del rng
        return {}

    @property
    def ensemble_size(self) -> int:
        """How many members a test-time ensemble can average (1: none)."""
        return 1

    @nn.nowrap
    def ensemble_log_prob(self, variables, x, labels, num_members: int):
        """log p(x) per example `[B]` averaged in probability over `num_members` variants."""
        raise ValueError(
            f"eval.ensemble_masks={num_members}: {type(self).__name__} has no test-time "
            "ensemble; use 1"
        )

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch: int) -> Decoder:
        """The cached decoder for `batch` samples (traceable; called inside jit)."""
        raise NotImplementedError(f"{type(self).__name__} has no cached decoder")

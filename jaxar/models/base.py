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
  conditioning map and how it is computed from a training batch (None: none; a
  dataset may also serve it as the batch's "cond", e.g. a prior's coarser codes);
  `cond_levels`: 0 for a float map, K for integer codes in [0, K).
* `training_kwargs(rng)`: extra `__call__` arguments drawn per training step
  (MADE's mask set); `ensemble_log_prob(...)`: a test-time ensemble over them,
  of at most `ensemble_size` members.
* `decoder(variables, labels, cond, batch)`: the model's `Decoder` for cached
  sampling. Every autoregressive model has one; `jaxar.sampling` runs it in its one loop.

What the trainer minimizes and reports (defaults: the negative log-likelihood):

* `loss(x, labels=None, cond=None, train=False, **training_kwargs)`: per-example
  metrics, a dict of float32 `[B, ...]` arrays; `metrics[loss_metric]` `[B]` is the
  objective (its batch mean is minimized and checked for divergence). Default:
  `{"bpd": ..., "nll_nats": ...}`.
* `summarize(means)`: the reported metrics from the batch (or test-set) means of
  `loss`'s metrics (traceable), e.g. a perplexity from a mean code histogram.
* `preview(variables, key, num, examples, sample)`: the images a training run writes
  at a sample step and the grid's number of columns (None: about square):
  `([N, *event_shape] ints in [0, num_levels), cols)`; `num` samples drawn with
  `sample` (`jaxar.sampling.sample`) by default; an autoencoder shows `examples`
  (a test batch, dict of numpy arrays) in one row above their reconstructions.
* `autoregressive`: False for models that are not a distribution over their input
  (the VQ-VAE): they have no sampler and no bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
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


def grouped_log_prob(model, params, x):
    """Turns model outputs into per-dimension log-probs of x's shape."""
    lik = model.likelihood
    x_groups = x if lik.groups_channels else x[..., None]
    return lik.log_prob(params, x_groups).reshape(x.shape)


def nats_to_bits_per_dim(nll_nats, event_shape):
    """The one conversion from nats per example to bits per dimension."""
    return nll_nats / (math.prod(event_shape) * math.log(2.0))


def nll_metrics(model, nll_nats_B) -> dict:
    """The likelihood models' per-example metrics from their NLL in nats `[B]`."""
    return {"bpd": nats_to_bits_per_dim(nll_nats_B, model.event_shape), "nll_nats": nll_nats_B}


# What a family must define itself, checked when its class is defined: fields, members
# every model needs, and those only a distribution over its input (`autoregressive`) needs.
REQUIRED_FIELDS = ("event_shape", "num_levels")
REQUIRED_MEMBERS = ("num_classes", "__call__")
REQUIRED_AUTOREGRESSIVE = ("likelihood", "decoder")


class Model(nn.Module):
    """Base class of every jaxar model: the protocol's defaults (see the module docstring).

    Defining a subclass that lacks a required field or member (`REQUIRED_FIELDS`,
    `REQUIRED_MEMBERS`, and `REQUIRED_AUTOREGRESSIVE` unless `autoregressive = False`)
    raises a TypeError naming them.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)  # flax makes `cls` a dataclass
        fields = getattr(cls, "__dataclass_fields__", {})
        missing = [name for name in REQUIRED_FIELDS if name not in fields]
        required = REQUIRED_MEMBERS + (REQUIRED_AUTOREGRESSIVE if cls.autoregressive else ())
        # Defined by the family (or a base of it below Model), not by Model or flax.
        own = {name for k in cls.__mro__ if k is not Model and issubclass(k, Model)
               for name in (*vars(k), *getattr(k, "__dataclass_fields__", {}))}
        missing += [name for name in required if name not in own]
        if missing:
            raise TypeError(f"{cls.__name__} does not define the model protocol's "
                            f"{', '.join(missing)} (see jaxar.models.base)")

    # Not dataclass fields (no annotation): models without conditioning maps keep None.
    cond_shape = None
    # 0: `cond` is a float map; K > 0: integer codes in [0, K) (a coarser VQ-VAE code map).
    cond_levels = 0
    autoregressive = True
    loss_metric = "bpd"

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

    def loss(self, x, labels=None, cond=None, train: bool = False, **kwargs) -> dict:
        """Per-example metrics `[B]`: bits/dim (the objective) and the NLL in nats.

        The network may compute in a lower precision; the likelihood is float32.
        """
        params = self(x, labels, cond, train=train, **kwargs)
        lp = grouped_log_prob(self, params.astype(jnp.float32), x)
        return nll_metrics(self, -lp.reshape(lp.shape[0], -1).sum(-1))

    @nn.nowrap
    def summarize(self, means: dict) -> dict:
        """The reported metrics from the means of `loss`'s metrics (traceable)."""
        return means

    @nn.nowrap
    def preview(self, variables, key, num: int, examples: dict, sample: Callable):
        """`num` samples (labels cycling over the classes; `cond` from `examples`), None."""
        labels = jnp.arange(num, dtype=jnp.int32) % self.num_classes if self.num_classes else None
        cond = None
        if self.cond_shape:
            cond = examples.get("cond")
            if cond is None:
                cond = self.derive_cond(jnp.asarray(examples["x"]))
            cond = jnp.asarray(np.resize(np.asarray(cond), (num, *np.shape(cond)[1:])))
        return sample(self, variables, key, num, labels=labels, cond=cond), None

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch: int) -> Decoder:
        """The cached decoder for `batch` samples (traceable; called inside jit)."""
        raise NotImplementedError(f"{type(self).__name__} has no cached decoder")

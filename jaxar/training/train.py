"""Training: the train state, one pure train step, evaluation and the loop.

`train_step` is jitted once over a (data, fsdp) device mesh (`jaxar.training.sharding`):
the global batch is split over every device of every process, the state is
replicated (or FSDP-sharded) and donated. The loss is the mean negative
log-likelihood in bits per dimension; the Polyak average of the parameters
(`ema_params`) is what is evaluated and sampled from. `train.grad_accum_steps`
cuts the global batch into micro-batches whose gradients are averaged;
`train.compute_dtype = "bfloat16"` runs the network in bfloat16 on float32
parameters and computes likelihoods in float32.

A run stops cleanly (`RunFailed`, one line from the CLI, exit code 1) on a loss that
is not finite or above `train.max_bpd` (`Diverged`: checkpoints holding the diverged
parameters are moved aside to `diverged-<step>`; one is saved only after its step's
loss passed and with finite parameters), on a checkpoint, metrics or sample write
that fails, and on a data read that fails; the message names the checkpoint a re-run
resumes from. One process at a time trains in a workdir (`jaxar.training.lock`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxar import config, data, files, sampling, settings
from jaxar import models as models_lib
from jaxar.data import image_folder
from jaxar.models import base
from jaxar.models.common import rng_context
from jaxar.training import checkpoint, codes, precision, preemption, reporting, sharding
from jaxar.training import lock as workdir_lock
from jaxar.training.preemption import Preempted  # noqa: F401 (raised by train_and_evaluate)

log = logging.getLogger(__name__)

# Leaves smaller than this stay replicated under FSDP: gathering them costs more
# latency than their memory is worth.


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array
    batch_stats: Any  # BatchNorm running averages; {} for models without them


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """clip_by_global_norm -> Adam(b1, b2) -> learning rate decayed by `lr_decay` per step."""
    t = cfg.train
    schedule = optax.exponential_decay(t.learning_rate, transition_steps=1, decay_rate=t.lr_decay)
    chain = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    chain += [optax.scale_by_adam(b1=t.b1, b2=t.b2), optax.scale_by_learning_rate(schedule)]
    return optax.chain(*chain)


def create_train_state(model, cfg, init_key, rng, x, labels=None, cond=None) -> TrainState:
    """A fresh state; params are initialized on batch x (data-dependent where layers need it)
    with its conditioning map `cond` (None: derived from x, if the model has one)."""
    variables = models_lib.init_variables(model, cfg, init_key, x=x, labels=labels, cond=cond)
    return state_from_variables(cfg, variables, rng)


def state_from_variables(cfg, variables, rng) -> TrainState:
    """The state at step 0 of a run starting from `variables` (its params, also as the
    average, a fresh optimizer): a new run's, or imported weights' (`jaxar-import`)."""
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),  # its own buffers: the state is donated
        opt_state=make_optimizer(cfg).init(params),
        rng=rng,
        batch_stats=variables.get("batch_stats", {}),
    )


def model_loss(model, params, batch_stats, batch, rng=None, train=False,
               dtype=jnp.float32, micro_step=None):
    """The model's per-example metrics (`Model.loss`, float32 `[B, ...]`) and updated
    non-gradient state (BatchNorm averages, EMA codebooks).

    The network runs in `dtype`; `micro_step` (gradient accumulation) gives each
    micro-batch its own dropout while the step's other random choices are shared.
    The conditioning map is the batch's "cond" (a prior's coarser codes) where the data
    serves one, else what the model derives from x.
    """
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    labels = batch["labels"] if model.num_classes else None
    cond = batch["cond"] if model.cond_shape and "cond" in batch else model.derive_cond(batch["x"])
    kwargs = dict(train=train, **(model.training_kwargs(rng) if train else {}))
    if train:
        dropout_rng, _ = jax.random.split(rng)
        if micro_step is not None:
            dropout_rng = jax.random.fold_in(dropout_rng, micro_step)
        kwargs["rngs"] = {"dropout": dropout_rng}
    mutable = ["batch_stats"] if train and batch_stats else False
    if np.dtype(dtype) != np.float32:
        variables = {**variables, "params": precision.cast_floats(params, dtype)}
    with precision.compute_in(dtype):
        out = model.apply(variables, batch["x"], labels, cond, method=model.loss,
                          mutable=mutable, **kwargs)
    metrics, updates = out if mutable else (out, {"batch_stats": batch_stats})
    return metrics, updates["batch_stats"]


def _means(metrics: dict) -> dict:
    return {k: v.mean(axis=0) for k, v in metrics.items()}


def _accumulate(grad_fn, state, batch, accum_steps: int, micro_sharding):
    """`grad_fn`'s loss, aux and gradients averaged over `accum_steps` micro-batches."""

    def split(a):  # micro-batch j takes rows j, j + k, ...: each device keeps its own rows
        a = a.reshape(a.shape[0] // accum_steps, accum_steps, *a.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(a, micro_sharding)

    def body(carry, inputs):
        grads_sum, loss_sum, means_sum, batch_stats = carry
        micro, j = inputs
        (loss, (means, batch_stats)), grads = grad_fn(state.params, batch_stats, micro, j)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        means_sum = jax.tree.map(jnp.add, means_sum, means)
        return (grads_sum, loss_sum + loss, means_sum, batch_stats), None

    zero = jnp.zeros((), jnp.float32)
    micro_batches = (jax.tree.map(split, batch), jnp.arange(accum_steps))
    first = jax.tree.map(lambda a: a[0], micro_batches[0])
    shapes = jax.eval_shape(lambda: grad_fn(state.params, state.batch_stats, first, 0)[0][1][0])
    means = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    init = (jax.tree.map(jnp.zeros_like, state.params), zero, means, state.batch_stats)
    (grads, loss, means, batch_stats), _ = jax.lax.scan(body, init, micro_batches)
    mean = lambda x: x / accum_steps
    return (mean(loss), (jax.tree.map(mean, means), batch_stats)), jax.tree.map(mean, grads)


def train_step(state: TrainState, batch, *, model, optimizer, ema_decay: float,
               dtype=jnp.float32, accum_steps: int = 1, micro_sharding=None):
    """One optimizer step on the global `batch`; returns the new state and scalar metrics."""
    rng, step_rng = jax.random.split(state.rng)

    def loss_fn(params, batch_stats, micro, micro_step):
        metrics, batch_stats = model_loss(
            model, params, batch_stats, micro, step_rng, True, dtype, micro_step
        )
        means = _means(metrics)
        return means[model.loss_metric], (means, batch_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (_, (means, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, None)
    else:
        (_, (means, batch_stats)), grads = _accumulate(
            grad_fn, state, batch, accum_steps, micro_sharding
        )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The average warms up as in tf.train.ExponentialMovingAverage(num_updates=step), so a
    # short run is not dominated by its random initialization.
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema,
        opt_state=opt_state,
        rng=rng,
        batch_stats=batch_stats,
    )
    metrics = {f"train/{k}": v for k, v in model.summarize(means).items()}
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    return new_state, metrics


def eval_step(params, batch_stats, batch, *, model, ensemble_masks: int = 1,
              per_example: bool = False):
    """Sums over one padded eval batch of every per-example metric times the mask, and
    of the mask ("count"), in float32; with `per_example`, also "rows": every row's
    metrics, label and mask.

    `ensemble_masks > 1` scores the model's test-time ensemble (`Model.ensemble_log_prob`).
    """
    if ensemble_masks > 1:
        labels = batch["labels"] if model.num_classes else None
        nll = -model.ensemble_log_prob({"params": params}, batch["x"], labels, ensemble_masks)
        metrics = base.nll_metrics(model, nll)
    else:
        metrics, _ = model_loss(model, params, batch_stats, batch)
    mask = batch["mask"]
    sums = {k: jnp.tensordot(mask, v, axes=1) for k, v in metrics.items()}
    out = {**sums, "count": mask.sum()}
    if per_example:
        out["rows"] = {**metrics, "labels": batch["labels"], "mask": mask}
    return out


def jit_eval_step(model, cfg, mesh, params_sharding, batch_stats_sharding,
                  per_example: bool = False):
    """`eval_step(params, batch_stats, batch)` jitted over `mesh`: the batch split over
    every device, the outputs replicated on every device of every process."""
    step = functools.partial(eval_step, model=model, per_example=per_example,
                             ensemble_masks=settings.Settings.of(cfg).eval.ensemble_masks)
    return jax.jit(
        step, in_shardings=(params_sharding, batch_stats_sharding, sharding.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, P()),
    )


def padded_eval_batch_size(cfg, mesh) -> int:
    """The global eval batch: `data.eval_batch_size(cfg)` rounded up to fill every device
    (the padding rows are masked out)."""
    return -(-data.eval_batch_size(cfg) // mesh.size) * mesh.size


def put_batch(batch: dict, batch_sharding) -> dict:
    """This process's block of a global batch (numpy) -> global arrays split over the mesh."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in batch.items()}


def evaluate_split(step, split, batch_size: int, put, data_shard=(0, 1), on_rows=None):
    """`(means, count)`: the means of every metric `step` sums (float64) over each example
    of `split` exactly once, and the number of examples.

    `step(global_batch)` is a jitted `eval_step`; the batches are `data.eval_batches`
    (this process's `data_shard`, the last one padded and masked) put on the devices by
    `put`. `on_rows(rows)` receives each batch's "rows" (numpy, global batch order) when
    `step` returns them. The host reads the next batch while the devices compute.
    """
    sums, pending = None, None

    def collect(out):
        nonlocal sums
        out = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(out))
        rows = out.pop("rows", None)
        if rows is not None and on_rows is not None:
            on_rows(rows)
        sums = out if sums is None else jax.tree.map(np.add, sums, out)

    for batch in data.eval_batches(split, batch_size, *data_shard):
        out = step(put(batch))
        if pending is not None:
            collect(pending)
        pending = out
    if pending is not None:
        collect(pending)
    count = float(sums.pop("count"))
    return {k: v / max(count, 1.0) for k, v in sums.items()}, count


class Trainer:
    """Jitted, sharded steps for one model and config; keeps host code out of them.

    `devices` (default: all devices of all processes) are laid out as `cfg.mesh`.
    Checks train.batch_size against the mesh before anything compiles.
    """

    def __init__(self, model, cfg, devices=None):
        self.model, self.cfg = model, cfg
        self.settings = settings.Settings.of(cfg)
        self.mesh = sharding.make_mesh(self.settings.mesh, devices)
        accum_steps = self.settings.train.grad_accum_steps
        sharding.check_batch_size(cfg.train.batch_size, self.mesh, accum_steps)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.data_shard = sharding.data_shard(self.batch_sharding)
        self.eval_batch_size = padded_eval_batch_size(cfg, self.mesh)
        self.optimizer = make_optimizer(cfg)
        self._create = functools.partial(create_train_state, model, cfg)
        self.abstract_state = self._abstract_state(self.settings.mesh.fsdp_min_size)
        state_sharding = jax.tree.map(lambda s: s.sharding, self.abstract_state)
        self._init = jax.jit(self._create, out_shardings=state_sharding)
        step = functools.partial(
            train_step, model=model, optimizer=self.optimizer, ema_decay=cfg.train.ema_decay,
            dtype=precision.compute_dtype(cfg), accum_steps=accum_steps,
            micro_sharding=NamedSharding(self.mesh, P(None, sharding.BATCH_AXES)),
        )
        self.train_step = jax.jit(
            step,
            in_shardings=(state_sharding, self.batch_sharding),
            out_shardings=(state_sharding, self.replicated),
            donate_argnums=0,
        )
        self.eval_step = jit_eval_step(model, cfg, self.mesh, state_sharding.ema_params,
                                       state_sharding.batch_stats)
        self._all_finite = all_finite(self.mesh, state_sharding)

    def state_is_finite(self, state: TrainState) -> bool:
        """Whether every float of the state (parameters, average, optimizer) is finite."""
        return bool(self._all_finite(state))

    def _abstract_state(self, fsdp_min_size: int) -> TrainState:
        """Shapes, dtypes and shardings of a new state (for init and restore), computing nothing."""
        # On the mesh, as init_state's arguments are: the trace is then the one init compiles.
        on_mesh = functools.partial(jax.ShapeDtypeStruct, sharding=self.replicated)
        key = on_mesh((2,), jnp.uint32)
        x = on_mesh((self.cfg.train.init_batch_size, *self.model.event_shape), jnp.int32)
        labels = on_mesh(x.shape[:1], jnp.int32) if self.model.num_classes else None
        cond = None  # served by the data (integer codes) or derived from x
        if self.model.cond_levels:
            cond = on_mesh((*x.shape[:1], *self.model.cond_shape), jnp.int32)
        shapes = jax.eval_shape(self._create, key, key, x, labels, cond)
        shardings = sharding.state_shardings(shapes, self.mesh, fsdp_min_size)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )

    def device_batch(self, batch: dict) -> dict:
        """This process's block of a global batch (numpy) -> global arrays split over the mesh."""
        return put_batch(batch, self.batch_sharding)

    def init_state(self, key, batch) -> TrainState:
        """A new state, created already sharded, initialized on the first
        `train.init_batch_size` rows of `batch` (a global batch every process holds)."""
        init_key, rng = jax.random.split(key)
        x = np.asarray(batch["x"][: self.cfg.train.init_batch_size])
        # Split over the devices when it divides, so data-dependent init reduces across them.
        x_sharding = self.batch_sharding if len(x) % self.mesh.size == 0 else self.replicated
        args = [sharding.global_array(k, self.replicated) for k in (init_key, rng)]
        args.append(sharding.global_array(x, x_sharding))
        labels = batch["labels"][: len(x)] if self.model.num_classes else None
        cond = batch["cond"][: len(x)] if self.model.cond_levels else None
        for value in (labels, cond):
            args.append(None if value is None else sharding.global_array(value, x_sharding))
        # No rng_context here: init_variables draws its weights under one itself, and
        # its key split stays as it always was.
        return self._init(*args)

    def to_host(self, tree):
        """Numpy copy of (part of) the state on every process."""
        return sharding.to_host(tree, self.mesh)

    def evaluate(self, state: TrainState, test_split) -> dict[str, float]:
        """The model's metrics (`Model.summarize`; bits/dim and nats per example for
        likelihood models) of the EMA params, exact over the test split."""
        step = functools.partial(self.eval_step, state.ema_params, state.batch_stats)
        means, _ = evaluate_split(step, test_split, self.eval_batch_size, self.device_batch,
                                  self.data_shard)
        summary = jax.device_get(self.model.summarize(means))
        return {f"eval/{k}": float(v) for k, v in summary.items()}


def write_samples(trainer: Trainer, state, step: int, workdir: pathlib.Path, test_split) -> None:
    """Writes the model's preview (`Model.preview`: `train.num_samples` samples drawn
    with the EMA params, or reconstructions) into samples_<step>.png.

    Every process gathers the parameters; process 0 samples (on one device) and writes.
    """
    model, cfg = trainer.model, trainer.cfg
    variables = {"params": state.ema_params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    variables = trainer.to_host(variables)
    if jax.process_index() != 0:
        return
    n = cfg.train.num_samples
    examples = test_split.get(np.arange(min(n, len(test_split))))
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)
    x, cols = model.preview(variables, key, n, examples, sampling.sample)
    image_shape = settings.Settings.of(cfg).data.image_shape
    path = workdir / f"samples_{step}.png"
    with _failing(f"writing {path}"):
        reporting.save_image_grid(path, np.asarray(x), model.num_levels, image_shape, cols)


class BadInput(ValueError):
    """A config, dataset or workdir that cannot be trained: what `python -m jaxar.cli.train`
    reports in one line with exit code 2 (other errors keep their tracebacks)."""


class RunFailed(RuntimeError):
    """A run that stopped before its last step, with everything closed: a checkpoint,
    metrics or sample write that failed (read-only or full disk), a data loader that
    failed, or a loss that diverged. `python -m jaxar.cli.train` reports it in one line
    with exit code 1; the message names the checkpoint a re-run resumes from."""


class Diverged(RunFailed, FloatingPointError):
    """A non-finite loss or parameters, or a loss above `train.max_bpd`, at `step`.
    Checkpoints of steps >= `first_bad` hold the diverged parameters."""

    def __init__(self, message: str, step: int, first_bad: int):
        super().__init__(message)
        self.step, self.first_bad = step, first_bad


@contextlib.contextmanager
def _failing(what: str, errors: tuple = (Exception,)):
    """Any of `errors` inside (from I/O, orbax, a data source) becomes one RunFailed line."""
    try:
        yield
    except (RunFailed, BadInput, KeyboardInterrupt):
        raise
    except errors as err:  # reported in one line, chained for the API
        raise RunFailed(f"{what} failed: {checkpoint.one_line(err)}") from err


def max_bpd(cfg, model) -> float:
    """`train.max_bpd`, or its default: 8 x log2(num_levels), 8 times a uniform model's."""
    value = settings.Settings.of(cfg).train.max_bpd
    settings.check_max_bpd(value)
    return 8.0 * math.log2(model.num_levels) if value is None else float(value)


def _check_loss(step: int, metrics: dict, limit: float, name: str = "bpd") -> dict[str, float]:
    """The step's metrics as floats; Diverged if its loss (`train/<name>`) is non-finite
    or above `limit`.

    The loss of step s is that of the parameters after step s - 1, so the checkpoint of
    step s - 1 (if any) holds the diverged parameters too.
    """
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    loss = values[f"train/{name}"]
    unit = " bits/dim" if name == "bpd" else ""
    if not np.isfinite(loss):
        raise Diverged(f"training diverged: the loss is {loss} at step {step}", step, step - 1)
    if loss > limit:
        raise Diverged(f"training diverged: the loss is {loss:.4g}{unit} at step {step}, "
                       f"above train.max_bpd={limit:.4g}", step, step - 1)
    return values


# all_finite concatenates a dtype's leaves in runs of at most this many elements: a
# backend that does not fuse a concatenation into its reduction copies no more at once.
FINITE_CHECK_RUN = 1 << 24


def all_finite(mesh, shardings):
    """A jitted `tree -> bool scalar`: whether every float of a tree laid out as
    `shardings` (NamedShardings over `mesh`) is finite.

    Each device reads only its own shards, as one reduction per run of same-dtype
    leaves (`FINITE_CHECK_RUN` elements; a reduction per leaf compiles a kernel per
    leaf: thousands for a deep model's state), and the devices agree with one
    all-reduce.
    """

    def local(tree):
        runs = {}  # dtype -> runs of raveled leaves
        for x in jax.tree.leaves(tree):
            if not jnp.issubdtype(x.dtype, jnp.inexact):
                continue
            dtype_runs = runs.setdefault(x.dtype, [[]])
            if dtype_runs[-1] and sum(r.size for r in dtype_runs[-1]) + x.size > FINITE_CHECK_RUN:
                dtype_runs.append([])
            dtype_runs[-1].append(x.ravel())
        bad = [~jnp.isfinite(jnp.concatenate(run)).all()
               for dtype_runs in runs.values() for run in dtype_runs]
        any_bad = jnp.stack(bad).any() if bad else jnp.bool_(False)
        return jax.lax.pmax(any_bad.astype(jnp.int32), mesh.axis_names) == 0

    specs = jax.tree.map(lambda s: s.spec, shardings)
    # check_vma off: the flag varies over the axes some leaf is split on and over no
    # other, and the all-reduce over every axis is what makes it the same everywhere.
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=P(),
                                 check_vma=False))


def _usable_workdir(workdir) -> pathlib.Path:
    """`workdir` as a path, created if missing; ValueError if it cannot be written."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {str(workdir)!r} is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--workdir {str(workdir)!r} cannot be created: {err}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {str(workdir)!r} is not writable")
    return workdir


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, *,
                       start_over: bool = False) -> TrainState:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint; returns the final state.

    `start_over` trains from step 0 even where the workdir holds a run (of this or of
    another config or data): its checkpoints are moved aside to
    `checkpoints/previous-<step>` first. Without it, a run whose saved data section
    or batch size differs from `cfg`'s is refused (BadInput), unless its checkpoint
    holds no data position (`FRESH_DATA`: imported weights, fine-tuned on any data).

    SIGTERM or SIGINT (`jaxar.training.preemption`) ends the run after the step in
    flight with a checkpoint of that step, then raises Preempted.

    With several processes, every process runs this with the same arguments and
    `workdir` must be one shared directory; process 0 writes metrics and samples and
    holds the workdir's lock (`jaxar.training.lock`) while training.

    Raises BadInput for input that cannot be trained (before anything is written: a
    refused run leaves no new workdir, lock or folder index behind) and RunFailed
    (Diverged for a diverged loss) for a run that had to stop; either way every file,
    thread and the lock are released first.
    """
    is_main = jax.process_index() == 0
    lock = ckpt = writer = train_iter = None
    new_files = []  # made by this run before its input was accepted: removed if refused
    # From here on a signal stops the run after its next step (with a checkpoint).
    watcher = preemption.Watcher().__enter__()
    try:
        try:  # everything that checks the user's input, before any training
            config.validate(cfg, workdir)  # every key and value, before anything is written
            new_files = _new_run_files(workdir)
            workdir = _usable_workdir(workdir)
            lock = workdir_lock.WorkdirLock(workdir).acquire()
            model = models_lib.build_model(cfg)
            limit = max_bpd(cfg, model)
            trainer = Trainer(model, cfg)
            data_cfg = cfg.copy_and_resolve_references()
            data_cfg.eval.batch_size = trainer.eval_batch_size  # what the data checks is what runs
            with _failing("loading the data", errors=(OSError,)):  # ValueError: bad input
                codes.prepare(cfg)  # a prior's VQ-VAE codes, encoded once
                train_iter, test_split = data.create_datasets(data_cfg, *trainer.data_shard,
                                                              workdir=workdir)
            _check_served_cond(model, train_iter.split)
            ckpt = checkpoint.Checkpointer(workdir, cfg.train.max_checkpoints)
            restored = None if start_over else ckpt.restore_latest(trainer.abstract_state)
            if restored is not None and restored.data != FRESH_DATA:
                _check_resumable(cfg, restored, ckpt.directory)
                train_iter.set_state(restored.data)
        except ValueError as err:
            if lock is not None and lock.held:  # never another run's files
                _remove_quietly(new_files)
            raise BadInput(str(err)) from err
        if start_over:
            with _failing(f"moving the previous checkpoints in {ckpt.directory} aside"):
                ckpt.move_aside_all("previous")
        if restored is not None:
            ckpt.move_aside_unreadable(restored)
        if is_main:  # after the restore: a workdir of another config keeps its config.json
            with _failing(f"writing {workdir / 'config.json'}"):
                files.write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
            mesh = trainer.mesh.shape
            print(f"{jax.process_count()} process(es), {jax.device_count()} device(s): mesh "
                  f"data={mesh[sharding.DATA]} x fsdp={mesh[sharding.FSDP]}", flush=True)

        if restored is None:
            # Every process reads the whole (small) init batch.
            init_count = min(cfg.train.init_batch_size, len(train_iter.split))
            with _failing("reading the initialization batch"):
                init_batch = train_iter.split.get(np.arange(init_count))
            state = trainer.init_state(jax.random.PRNGKey(cfg.seed), init_batch)
        else:
            state = restored.state
            if is_main:
                print(f"resumed from the checkpoint at step {restored.step} in "
                      f"{ckpt.directory}", flush=True)
        with _failing(f"opening the metrics of {workdir}"):
            writer = reporting.MetricsWriter(
                workdir, enabled=is_main, start_step=0 if restored is None else restored.step)
        state, stopped = _loop(trainer, state, train_iter, test_split, ckpt, writer, workdir,
                               limit, watcher.should_stop)
        with _failing(f"saving the last checkpoint in {ckpt.directory}"):
            ckpt.close()
        with _failing(f"closing the metrics of {workdir}"):
            writer.close()
        if stopped is not None:
            signum = watcher.received()
            raise Preempted(
                f"stopped by {signal_name(signum)} after step {stopped}: saved the checkpoint "
                f"at step {stopped} in {ckpt.directory}; run the same command to resume",
                stopped, signum)
        return state
    except RunFailed as err:
        try:
            note = _resume_note(ckpt, err)
        except Exception as note_error:  # noqa: BLE001 (the failure itself is the news)
            note = f"the checkpoints could not be listed ({checkpoint.one_line(note_error)})"
        err.args = (f"{err}; {note}",)
        raise
    finally:  # after a failure: release orbax's threads, TensorBoard's, grain's workers,
        watcher.__exit__()  # the signal handlers and the lock
        if ckpt is not None:
            _quietly(ckpt.close, prune=False)
        if writer is not None:
            _quietly(writer.close)
        if train_iter is not None:
            _quietly(train_iter.close)
        if lock is not None:
            lock.release()


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _new_run_files(workdir) -> list[pathlib.Path]:
    """The paths a refused run must not leave behind that do not exist yet: the workdir
    (or its highest missing parent), else its lock and folder index."""
    workdir = pathlib.Path(workdir).absolute()
    if not workdir.exists():
        top = workdir
        while not top.parent.exists():
            top = top.parent
        return [top]
    candidates = (workdir / workdir_lock.LOCK_NAME, workdir / image_folder.INDEX_FILE)
    return [p for p in candidates if not p.exists()]


def _remove_quietly(paths) -> None:
    for path in paths:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not remove %s: %s", path, err)


def _check_served_cond(model, split) -> None:
    """ValueError unless the data serves the integer conditioning map the model reads."""
    if not model.cond_levels:
        return
    served = split.get(np.arange(1)).get("cond")
    if served is None:
        raise ValueError(
            f"model.cond_levels={model.cond_levels} needs data that serves a code map to "
            f"condition on (data.source='codes', data.level='bottom'); {split.name} serves none"
        )
    if tuple(served.shape[1:]) != tuple(model.cond_shape):
        raise ValueError(
            f"model.cond_shape={tuple(model.cond_shape)} does not match the code maps "
            f"{tuple(served.shape[1:])} that {split.name} serves as cond"
        )
    if model.cond_levels != split.source.levels:  # both levels share one codebook size
        raise ValueError(f"model.cond_levels={model.cond_levels} must equal the codebook size "
                         f"{split.source.levels} of the code maps {split.name} serves as cond")


# The data position saved with a state whose run has read no data yet (imported weights,
# `jaxar-import`): a run resuming it reads its data from the start, whatever data and
# batch size it is given, as a new run does; its own checkpoints hold grain's position.
FRESH_DATA: dict = {}

# data keys that do not choose the training examples or their order: free on resume.
_DATA_KEYS_FREE_ON_RESUME = ("num_workers", "prefetch", "tfds_dir", "image_shape", "num_test")


def _check_resumable(cfg, restored: checkpoint.Restored, directory) -> None:
    """ValueError if the run cannot continue from `restored` with `cfg`.

    A changed train.batch_size or data section (another source, dataset, shape,
    num_train, folder, ...; not the keys of `_DATA_KEYS_FREE_ON_RESUME`) is refused:
    the saved data position counts batches of the saved size over the saved data, and a
    resumed run would no longer be the run it continues (nor equal an uninterrupted
    one). Everything else (learning rate, num_steps, mesh, ...) may change on resume.
    """
    saved_cfg = restored.config or {}
    where = f"the checkpoint at step {restored.step} in {directory}"
    alternatives = "--start_over (its checkpoints are moved aside), or use a new --workdir"
    saved = (saved_cfg.get("train") or {}).get("batch_size")
    if saved is not None and saved != cfg.train.batch_size:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} differs from the batch size "
            f"{saved} of {where}: its data position does not carry over. Resume with "
            f"--config.train.batch_size={saved}, train from scratch with {alternatives}"
        )
    saved_data = saved_cfg.get("data") or {}
    data_now = json.loads(cfg.to_json_best_effort()).get("data", {})
    changed = [
        f"data.{key}={data_now.get(key)!r} (saved: {saved_data[key]!r})"
        for key in sorted(saved_data)
        if key not in _DATA_KEYS_FREE_ON_RESUME and data_now.get(key) != saved_data[key]
    ]
    if changed:
        raise ValueError(
            f"the data differs from that of {where}: {', '.join(changed)}; its data "
            f"position does not carry over to other data. Resume with the saved data "
            f"settings, train from scratch with {alternatives}"
        )


def _resume_note(ckpt, err: RunFailed) -> str:
    """Where a re-run resumes after `err`; diverged checkpoints are moved aside first."""
    if ckpt is None:
        return "no checkpoint was touched"
    ckpt.wait_quietly()
    note = ""
    if isinstance(err, Diverged):
        moved = ckpt.discard_from(err.first_bad)
        if moved:
            note = (f"the checkpoint(s) of step {', '.join(map(str, moved))} hold the diverged "
                    f"parameters and were moved aside to diverged-<step>; ")
    steps = checkpoint.finished_steps(ckpt.directory)
    if not steps:
        return note + "no checkpoint is left: a re-run starts from scratch"
    return (note + f"the last good checkpoint is step {steps[-1]} in {ckpt.directory}: a "
            f"re-run resumes from it")


def _quietly(close, **kwargs) -> None:
    """Closes something while a run already stops for another reason: errors are logged."""
    try:
        close(**kwargs)
    except Exception as err:  # noqa: BLE001
        log.warning("while stopping: %s", checkpoint.one_line(err))


def _loop(trainer, state, train_iter, test_split, ckpt, writer, workdir, limit=math.inf,
          should_stop=lambda step: False):
    """Trains to train.num_steps; returns the state and the step at which `should_stop`
    stopped it early (with a checkpoint of that step), or None.

    Every step's loss is checked (`_check_loss`, against `limit` = train.max_bpd)
    before a checkpoint of that step is saved, and the state's finiteness before any
    evaluation, sample or save; failed reads and writes raise RunFailed, a divergence
    Diverged. The next batch is read and put on the devices while a step runs
    (`data.ReadAhead`); checkpoints hold the position of the batch after their step,
    not of the one read ahead. `should_stop(step)` is asked after every step (a
    preemption notice, `jaxar.training.preemption`)."""
    cfg = trainer.cfg
    t = cfg.train
    start = int(state.step)
    progress = _progress(start, t.num_steps)
    loss_metric = trainer.model.loss_metric
    check = lambda step, metrics: _check_loss(step, metrics, limit, loss_metric)
    window, tic, pending = [], time.perf_counter(), None
    batches = data.ReadAhead(train_iter, trainer.device_batch)
    try:
        for step in range(start + 1, t.num_steps + 1):
            with _failing(f"reading the training data for step {step}"):
                batch = batches.take()
            with rng_context():
                state, metrics = trainer.train_step(state, batch)
            if step < t.num_steps:  # the next batch reaches the devices while this step runs
                batches.read_ahead()
            if pending is not None:  # fetching the previous step's metrics overlaps this one
                window.append(check(*pending))
            pending = (step, metrics)
            last = step == t.num_steps
            log_now = step % t.log_every_steps == 0 or last
            eval_now = step % t.eval_every_steps == 0 or last
            sample_now = step % t.sample_every_steps == 0 or last
            stop_now = not last and should_stop(step)
            save_now = step % t.checkpoint_every_steps == 0 or last or stop_now
            if log_now or save_now:  # a checkpoint is saved only after its step's loss passed
                window.append(check(*pending))
                pending = None
            if log_now:
                elapsed = time.perf_counter() - tic
                summary = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                summary["train/images_per_sec"] = len(window) * t.batch_size / elapsed
                with _failing(f"writing the metrics of step {step} to {writer.path}"):
                    writer.write(step, summary)
                progress.set_postfix(**{loss_metric: f"{summary['train/' + loss_metric]:.4f}"},
                                     img_s=f"{summary['train/images_per_sec']:.0f}")
                window, tic = [], time.perf_counter()
            progress.update(1)
            if (eval_now or sample_now or save_now) and not trainer.state_is_finite(state):
                raise Diverged(f"training diverged: the parameters are not finite after step "
                               f"{step}", step, step)
            if eval_now:
                with _failing(f"evaluating step {step} (reading the test data)"):
                    result = trainer.evaluate(state, test_split)
                with _failing(f"writing the metrics of step {step} to {writer.path}"):
                    writer.write(step, result)
                if jax.process_index() == 0:
                    progress.write(f"step {step}: eval {loss_metric} "
                                   f"{result['eval/' + loss_metric]:.4f}")
            if sample_now and t.num_samples:
                write_samples(trainer, state, step, workdir, test_split)
            if save_now:
                with _failing(f"saving checkpoints in {ckpt.directory} (at step {step})"):
                    ckpt.save(step, state, batches.get_state(), cfg)
            if stop_now:
                return state, step
            if step % t.eval_every_steps == 0 or step % t.sample_every_steps == 0:
                tic = time.perf_counter()  # keep evaluation and sampling out of images/s
    finally:  # the bar ends its line, also before an error's
        progress.close()
    return state, None


def _progress(start: int, total: int):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=start, desc="train", disable=jax.process_index() != 0)

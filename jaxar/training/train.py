"""Training: the train state, one pure train step, evaluation and the loop.

`train_step` is jitted once over a (data, fsdp) device mesh (`jaxar.training.sharding`):
the global batch is split over every device of every process, the state is
replicated (or FSDP-sharded) and donated. The loss is the mean negative
log-likelihood in bits per dimension; the Polyak average of the parameters
(`ema_params`) is what is evaluated and sampled from. `train.grad_accum_steps`
cuts the global batch into micro-batches whose gradients are averaged;
`train.compute_dtype = "bfloat16"` runs the network in bfloat16 on float32
parameters and computes likelihoods in float32.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
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

from jaxar import data, sampling
from jaxar import models as models_lib
from jaxar.models.common import rng_context
from jaxar.training import checkpoint, precision, reporting, sharding

log = logging.getLogger(__name__)

# Leaves smaller than this stay replicated under FSDP: gathering them costs more
# latency than their memory is worth.
DEFAULT_FSDP_MIN_SIZE = 2**14


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


def create_train_state(model, cfg, init_key, rng, x, labels=None) -> TrainState:
    """A fresh state; params are initialized on batch x (data-dependent where layers need it)."""
    variables = models_lib.init_variables(model, cfg, init_key, x=x, labels=labels)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),  # its own buffers: the state is donated
        opt_state=make_optimizer(cfg).init(params),
        rng=rng,
        batch_stats=variables.get("batch_stats", {}),
    )


def nll_nats(model, params, batch_stats, batch, rng=None, train=False,
             dtype=jnp.float32, micro_step=None):
    """Per-example negative log-likelihood in nats `[B]` (float32), and updated batch stats.

    The network runs in `dtype`; `micro_step` (gradient accumulation) gives each
    micro-batch its own dropout while the step's other random choices are shared.
    """
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    labels = batch["labels"] if model.num_classes else None
    cond = models_lib.default_cond(model, batch["x"])
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
        out = model.apply(variables, batch["x"], labels, cond, mutable=mutable, **kwargs)
    params_out, updates = out if mutable else (out, {"batch_stats": batch_stats})
    lp = models_lib.grouped_log_prob(model, params_out.astype(jnp.float32), batch["x"])
    return -lp.reshape(lp.shape[0], -1).sum(-1), updates["batch_stats"]


def _accumulate(grad_fn, state, batch, accum_steps: int, micro_sharding):
    """`grad_fn`'s loss, aux and gradients averaged over `accum_steps` micro-batches."""

    def split(a):  # micro-batch j takes rows j, j + k, ...: each device keeps its own rows
        a = a.reshape(a.shape[0] // accum_steps, accum_steps, *a.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(a, micro_sharding)

    def body(carry, inputs):
        grads_sum, loss_sum, nll_sum, batch_stats = carry
        micro, j = inputs
        (loss, (nll, batch_stats)), grads = grad_fn(state.params, batch_stats, micro, j)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (grads_sum, loss_sum + loss, nll_sum + nll, batch_stats), None

    zero = jnp.zeros((), jnp.float32)
    init = (jax.tree.map(jnp.zeros_like, state.params), zero, zero, state.batch_stats)
    micro_batches = (jax.tree.map(split, batch), jnp.arange(accum_steps))
    (grads, loss, nll, batch_stats), _ = jax.lax.scan(body, init, micro_batches)
    mean = lambda x: x / accum_steps
    return (mean(loss), (mean(nll), batch_stats)), jax.tree.map(mean, grads)


def train_step(state: TrainState, batch, *, model, optimizer, ema_decay: float,
               dtype=jnp.float32, accum_steps: int = 1, micro_sharding=None):
    """One optimizer step on the global `batch`; returns the new state and scalar metrics."""
    rng, step_rng = jax.random.split(state.rng)

    def loss_fn(params, batch_stats, micro, micro_step):
        nll, batch_stats = nll_nats(
            model, params, batch_stats, micro, step_rng, True, dtype, micro_step
        )
        bpd = models_lib.nats_to_bits_per_dim(nll, model.event_shape)
        return bpd.mean(), (nll.mean(), batch_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, (nll, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, None)
    else:
        (loss, (nll, batch_stats)), grads = _accumulate(
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
    metrics = {"train/bpd": loss, "train/nll_nats": nll, "train/grad_norm": optax.tree.norm(grads)}
    return new_state, metrics


def eval_step(params, batch_stats, batch, *, model, ensemble_masks: int = 1):
    """Sums of masked NLL (nats) and of the mask over one padded eval batch, in float32.

    `ensemble_masks > 1` scores the model's test-time ensemble (`Model.ensemble_log_prob`).
    """
    if ensemble_masks > 1:
        labels = batch["labels"] if model.num_classes else None
        nll = -model.ensemble_log_prob({"params": params}, batch["x"], labels, ensemble_masks)
    else:
        nll, _ = nll_nats(model, params, batch_stats, batch)
    return {"nll_sum": (nll * batch["mask"]).sum(), "count": batch["mask"].sum()}


class Trainer:
    """Jitted, sharded steps for one model and config; keeps host code out of them.

    `devices` (default: all devices of all processes) are laid out as `cfg.mesh`.
    Checks train.batch_size against the mesh before anything compiles.
    """

    def __init__(self, model, cfg, devices=None):
        self.model, self.cfg = model, cfg
        mesh_cfg = cfg.get("mesh", None) or {}
        self.mesh = sharding.make_mesh(mesh_cfg, devices)
        accum_steps = cfg.train.get("grad_accum_steps", 1)
        sharding.check_batch_size(cfg.train.batch_size, self.mesh, accum_steps)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.data_shard = sharding.data_shard(self.batch_sharding)
        # Evaluation fills every device; the padding rows are masked out.
        self.eval_batch_size = -(-data.eval_batch_size(cfg) // self.mesh.size) * self.mesh.size
        self.optimizer = make_optimizer(cfg)
        self.abstract_state = self._abstract_state(
            mesh_cfg.get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE))
        state_sharding = jax.tree.map(lambda s: s.sharding, self.abstract_state)
        self._init = jax.jit(
            functools.partial(create_train_state, model, cfg), out_shardings=state_sharding
        )
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
        self.eval_step = jax.jit(
            functools.partial(
                eval_step, model=model, ensemble_masks=cfg.eval.get("ensemble_masks", 1)
            ),
            in_shardings=(
                state_sharding.ema_params, state_sharding.batch_stats, self.batch_sharding
            ),
            out_shardings=self.replicated,
        )

    def _abstract_state(self, fsdp_min_size: int) -> TrainState:
        """Shapes, dtypes and shardings of a new state (for init and restore), computing nothing."""
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        x = jax.ShapeDtypeStruct((self.cfg.train.init_batch_size, *self.model.event_shape),
                                 jnp.int32)
        labels = jax.ShapeDtypeStruct(x.shape[:1], jnp.int32) if self.model.num_classes else None
        shapes = jax.eval_shape(
            functools.partial(create_train_state, self.model, self.cfg), key, key, x, labels
        )
        shardings = sharding.state_shardings(shapes, self.mesh, fsdp_min_size)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )

    def device_batch(self, batch: dict) -> dict:
        """This process's block of a global batch (numpy) -> global arrays split over the mesh."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def init_state(self, key, batch) -> TrainState:
        """A new state, created already sharded, initialized on the first
        `train.init_batch_size` rows of `batch` (a global batch every process holds)."""
        init_key, rng = jax.random.split(key)
        x = np.asarray(batch["x"][: self.cfg.train.init_batch_size])
        # Split over the devices when it divides, so data-dependent init reduces across them.
        x_sharding = self.batch_sharding if len(x) % self.mesh.size == 0 else self.replicated
        args = [sharding.global_array(k, self.replicated) for k in (init_key, rng)]
        args.append(sharding.global_array(x, x_sharding))
        if self.model.num_classes:
            args.append(sharding.global_array(batch["labels"][: len(x)], x_sharding))
        # No rng_context here: init_variables draws its weights under one itself, and
        # its key split stays as it always was.
        return self._init(*args)

    def to_host(self, tree):
        """Numpy copy of (part of) the state on every process."""
        return sharding.to_host(tree, self.mesh)

    def evaluate(self, state: TrainState, test_split) -> dict[str, float]:
        """Test-set bits/dim (and nats per example) of the EMA params, exact over the split."""
        total, count = 0.0, 0.0
        for batch in data.eval_batches(test_split, self.eval_batch_size, *self.data_shard):
            out = self.eval_step(state.ema_params, state.batch_stats, self.device_batch(batch))
            total += float(out["nll_sum"])
            count += float(out["count"])
        nats = total / max(count, 1.0)
        bpd = float(models_lib.nats_to_bits_per_dim(nats, self.model.event_shape))
        return {"eval/bpd": bpd, "eval/nll_nats": nats}


def write_samples(trainer: Trainer, state, step: int, workdir: pathlib.Path, test_split) -> None:
    """Draws `train.num_samples` samples with the EMA params into samples_<step>.png.

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
    labels = jnp.arange(n, dtype=jnp.int32) % model.num_classes if model.num_classes else None
    cond = None
    if model.cond_shape:
        first = test_split.get(np.arange(min(n, len(test_split))))["x"]
        cond = models_lib.default_cond(model, jnp.asarray(np.resize(first, (n, *first.shape[1:]))))
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)
    x = sampling.sample(model, variables, key, n, labels=labels, cond=cond)
    image_shape = cfg.data.get("image_shape", None)
    reporting.save_image_grid(
        workdir / f"samples_{step}.png", np.asarray(x), model.num_levels, image_shape
    )


def _check_finite(step: int, metrics: dict) -> dict[str, float]:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values["train/bpd"]):
        raise FloatingPointError(f"loss is {values['train/bpd']} at step {step}")
    return values


class BadInput(ValueError):
    """A config, dataset or workdir that cannot be trained: what `python -m jaxar.cli.train`
    reports in one line with exit code 2 (other errors keep their tracebacks)."""


def _usable_workdir(workdir) -> pathlib.Path:
    """`workdir` as a path, created if missing; ValueError if it cannot be written."""
    workdir = pathlib.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--workdir {str(workdir)!r} cannot be created: {err}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {str(workdir)!r} is not writable")
    return workdir


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint; returns the final state.

    With several processes, every process runs this with the same arguments and
    `workdir` must be one shared directory; process 0 writes metrics and samples.
    """
    is_main = jax.process_index() == 0
    try:  # everything that checks the user's input, before any training
        workdir = _usable_workdir(workdir)
        model = models_lib.build_model(cfg)
        trainer = Trainer(model, cfg)
        data_cfg = cfg.copy_and_resolve_references()
        data_cfg.eval.batch_size = trainer.eval_batch_size  # what the data checks is what runs
        train_iter, test_split = data.create_datasets(data_cfg, *trainer.data_shard)
        ckpt = checkpoint.Checkpointer(workdir, cfg.train.max_checkpoints)
        try:
            restored = ckpt.restore_latest(trainer.abstract_state)
        except ValueError:
            ckpt.close()  # its orbax threads must not outlive it
            raise
    except ValueError as err:
        raise BadInput(str(err)) from err
    if is_main:  # after the restore: a workdir of another config keeps its config.json
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
        mesh = trainer.mesh.shape
        print(f"{jax.process_count()} process(es), {jax.device_count()} device(s): mesh "
              f"data={mesh[sharding.DATA]} x fsdp={mesh[sharding.FSDP]}", flush=True)

    if restored is None:
        # Every process reads the whole (small) init batch.
        init_count = min(cfg.train.init_batch_size, len(train_iter.split))
        init_batch = train_iter.split.get(np.arange(init_count))
        state = trainer.init_state(jax.random.PRNGKey(cfg.seed), init_batch)
    else:
        state, data_state, step = restored
        train_iter.set_state(data_state)
        if is_main:
            print(f"resumed from the checkpoint at step {step} in {ckpt.directory}", flush=True)
    writer = reporting.MetricsWriter(workdir, enabled=is_main)
    try:
        state = _loop(trainer, state, train_iter, test_split, ckpt, writer, workdir)
    finally:
        ckpt.close()
        writer.close()
    return state


def _loop(trainer, state, train_iter, test_split, ckpt, writer, workdir):
    cfg = trainer.cfg
    t = cfg.train
    start = int(state.step)
    progress = _progress(start, t.num_steps)
    window, tic, pending = [], time.perf_counter(), None
    for step in range(start + 1, t.num_steps + 1):
        with rng_context():
            state, metrics = trainer.train_step(state, trainer.device_batch(next(train_iter)))
        if pending is not None:  # fetching the previous step's metrics overlaps this one
            window.append(_check_finite(*pending))
        pending = (step, metrics)
        if step % t.log_every_steps == 0 or step == t.num_steps:
            window.append(_check_finite(*pending))
            pending = None
            elapsed = time.perf_counter() - tic
            summary = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            summary["train/images_per_sec"] = len(window) * t.batch_size / elapsed
            writer.write(step, summary)
            progress.set_postfix(
                bpd=f"{summary['train/bpd']:.4f}", img_s=f"{summary['train/images_per_sec']:.0f}"
            )
            window, tic = [], time.perf_counter()
        progress.update(1)
        last = step == t.num_steps
        if step % t.eval_every_steps == 0 or last:
            result = trainer.evaluate(state, test_split)
            writer.write(step, result)
            if jax.process_index() == 0:
                progress.write(f"step {step}: eval bpd {result['eval/bpd']:.4f}")
        if step % t.sample_every_steps == 0 or last:
            write_samples(trainer, state, step, workdir, test_split)
        if step % t.checkpoint_every_steps == 0 or last:
            ckpt.save(step, state, train_iter.get_state(), cfg)
        if step % t.eval_every_steps == 0 or step % t.sample_every_steps == 0:
            tic = time.perf_counter()  # keep evaluation and sampling out of images/s
    progress.close()
    return state


def _progress(start: int, total: int):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=start, desc="train", disable=jax.process_index() != 0)

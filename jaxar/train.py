"""Training: the train state, one pure train step, evaluation and the loop.

`train_step` is jitted once with the batch sharded over a `data` mesh axis
(every device, every host) and the state replicated and donated. The loss is
the mean negative log-likelihood in bits per dimension; the Polyak average of
the parameters (`ema_params`) is what is evaluated and sampled from.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxar import checkpoint, data, reporting, sampling
from jaxar import models as models_lib
from jaxar.models import made
from jaxar.models.common import rng_context

log = logging.getLogger(__name__)


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


def create_train_state(model, cfg, key, batch) -> TrainState:
    """Initializes params (data-dependent where layers need it) on `batch`."""
    init_key, rng = jax.random.split(key)
    x = jnp.asarray(batch["x"][: cfg.train.init_batch_size])
    labels = jnp.asarray(batch["labels"][: x.shape[0]]) if model.num_classes else None
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


def _apply_kwargs(model, rng, train: bool) -> dict:
    """Per-step model arguments: MADE's mask set (resampled every step when training)."""
    num_masks = getattr(model, "num_masks", 1)
    if train and num_masks > 1:
        return {"mask_index": jax.random.randint(rng, (), 0, num_masks)}
    return {}


def nll_nats(model, params, batch_stats, batch, rng=None, train=False):
    """Per-example negative log-likelihood in nats `[B]`, and updated batch stats."""
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    labels = batch["labels"] if model.num_classes else None
    cond = models_lib.default_cond(model, batch["x"])
    kwargs = dict(train=train, **_apply_kwargs(model, rng, train))
    if train:
        dropout_rng, _ = jax.random.split(rng)
        kwargs["rngs"] = {"dropout": dropout_rng}
    if train and batch_stats:
        params_out, updates = model.apply(
            variables, batch["x"], labels, cond, mutable=["batch_stats"], **kwargs
        )
        batch_stats = updates["batch_stats"]
    else:
        params_out = model.apply(variables, batch["x"], labels, cond, **kwargs)
    lp = models_lib.grouped_log_prob(model, params_out, batch["x"])
    return -lp.reshape(lp.shape[0], -1).sum(-1), batch_stats


def train_step(state: TrainState, batch, *, model, optimizer, ema_decay: float):
    """One optimizer step on `batch`; returns the new state and scalar metrics."""
    rng, step_rng = jax.random.split(state.rng)

    def loss_fn(params):
        nll, batch_stats = nll_nats(model, params, state.batch_stats, batch, step_rng, True)
        bpd = models_lib.nats_to_bits_per_dim(nll, model.event_shape)
        return bpd.mean(), (nll.mean(), batch_stats)

    (loss, (nll, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
    """Sums of masked NLL (nats) and of the mask over one padded eval batch.

    `ensemble_masks > 1` (MADE) scores the mean probability over that many mask sets.
    """
    if ensemble_masks > 1:
        labels = batch["labels"] if model.num_classes else None
        lp = made.ensemble_log_prob(model, {"params": params}, batch["x"], labels, ensemble_masks)
        nll = -lp
    else:
        nll, _ = nll_nats(model, params, batch_stats, batch)
    return {"nll_sum": (nll * batch["mask"]).sum(), "count": batch["mask"].sum()}


class Trainer:
    """Jitted, sharded steps for one model and config; keeps host code out of them."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.optimizer = make_optimizer(cfg)
        step = functools.partial(
            train_step, model=model, optimizer=self.optimizer, ema_decay=cfg.train.ema_decay
        )
        self.train_step = jax.jit(
            step,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            functools.partial(
                eval_step, model=model, ensemble_masks=cfg.eval.get("ensemble_masks", 1)
            ),
            in_shardings=(self.replicated, self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
        )

    def device_batch(self, batch: dict) -> dict:
        """Process-local numpy batch -> global arrays sharded over the data axis."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def init_state(self, key, batch) -> TrainState:
        state = create_train_state(self.model, self.cfg, key, batch)
        return jax.device_put(state, self.replicated)

    def abstract_state(self, key, batch) -> TrainState:
        """Shapes, dtypes and shardings of `init_state(key, batch)`, computing nothing."""
        shapes = jax.eval_shape(functools.partial(create_train_state, self.model, self.cfg), key,
                                batch)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes
        )

    def evaluate(self, state: TrainState, test_split) -> dict[str, float]:
        """Test-set bits/dim (and nats per example) of the EMA params, exact over the split."""
        total, count = 0.0, 0.0
        batch_size = data.eval_batch_size(self.cfg)
        for batch in data.eval_batches(test_split, batch_size):
            out = self.eval_step(state.ema_params, state.batch_stats, self.device_batch(batch))
            total += float(out["nll_sum"])
            count += float(out["count"])
        nats = total / max(count, 1.0)
        bpd = float(models_lib.nats_to_bits_per_dim(nats, self.model.event_shape))
        return {"eval/bpd": bpd, "eval/nll_nats": nats}


def write_samples(model, cfg, state, step: int, workdir: pathlib.Path, test_split) -> None:
    """Draws `train.num_samples` samples with the EMA params into samples_<step>.png."""
    n = cfg.train.num_samples
    labels = jnp.arange(n, dtype=jnp.int32) % model.num_classes if model.num_classes else None
    cond = None
    if getattr(model, "cond_shape", None):
        first = test_split.get(np.arange(min(n, len(test_split))))["x"]
        cond = models_lib.default_cond(model, jnp.asarray(np.resize(first, (n, *first.shape[1:]))))
    variables = {"params": state.ema_params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)
    x = sampling.sample(model, variables, key, n, labels=labels, cond=cond)
    if jax.process_index() == 0:
        image_shape = cfg.data.get("image_shape", None)
        reporting.save_image_grid(
            workdir / f"samples_{step}.png", np.asarray(x), model.num_levels, image_shape
        )


def _check_finite(step: int, metrics: dict) -> dict[str, float]:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values["train/bpd"]):
        raise FloatingPointError(f"loss is {values['train/bpd']} at step {step}")
    return values


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint; returns the final state."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    model = models_lib.build_model(cfg)
    train_iter, test_split = data.create_datasets(cfg)
    trainer = Trainer(model, cfg)
    ckpt = checkpoint.Checkpointer(workdir, cfg.train.max_checkpoints)

    key = jax.random.PRNGKey(cfg.seed)
    init_count = min(cfg.train.init_batch_size, len(train_iter.split))
    init_batch = train_iter.split.get(np.arange(init_count))
    restored = ckpt.restore_latest(trainer.abstract_state(key, init_batch))
    if restored is None:
        state = trainer.init_state(key, init_batch)
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
    cfg, model = trainer.cfg, trainer.model
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
            progress.write(f"step {step}: eval bpd {result['eval/bpd']:.4f}")
        if step % t.sample_every_steps == 0 or last:
            write_samples(model, cfg, state, step, workdir, test_split)
        if step % t.checkpoint_every_steps == 0 or last:
            ckpt.save(step, state, train_iter.get_state(), cfg)
        if step % t.eval_every_steps == 0 or step % t.sample_every_steps == 0:
            tic = time.perf_counter()  # keep evaluation and sampling out of images/s
    progress.close()
    return state


def _progress(start: int, total: int):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=start, desc="train", disable=jax.process_index() != 0)


"""Sharded-training jobs that need their own process (a device count, or a JAX system).

Run by tests/test_sharding.py, never collected by pytest itself:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py meshes OUT
  ... python tests/sharding_worker.py train CONFIG_JSON WORKDIR OUT

`meshes` trains the PixelCNN smoke config on 1 device and on 8 devices as 8x1
and 4x2 (data x fsdp) meshes, checks gradient accumulation and the batch-size
errors, and initializes a weight-normed model on 1 and 8 devices; it writes
the measured numbers to OUT (JSON) for the test to judge. `train` runs
`train_and_evaluate` and saves the final state's params to OUT (npz).
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

import jaxar
from jaxar import data
from jaxar.models import common
from jaxar.training import sharding, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3


def smoke_config(**train_overrides) -> ml_collections.ConfigDict:
    cfg = jaxar.load_config(str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke"))
    cfg.mesh.fsdp_min_size = 0  # shard every leaf that divides, even in a tiny model
    cfg.train.update(train_overrides)
    return cfg


def initial_state(cfg):
    """The smoke config's initial state on one device, as numpy (shared by every mesh)."""
    model = jaxar.build_model(cfg)
    trainer = train.Trainer(model, cfg, jax.devices()[:1])
    train_iter, _ = data.create_datasets(cfg, 0, 1)
    state = trainer.init_state(jax.random.PRNGKey(cfg.seed), train_iter.split.get(np.arange(8)))
    return trainer.to_host(state)


def run_steps(cfg, devices, host_state, steps: int = STEPS):
    """Per-step losses, host (params, opt_state) after each step, number of sharded leaves."""
    trainer = train.Trainer(jaxar.build_model(cfg), cfg, devices)
    state = jax.device_put(host_state, jax.tree.map(lambda s: s.sharding, trainer.abstract_state))
    train_iter, _ = data.create_datasets(cfg, 0, 1)
    losses, snapshots = [], []
    for _ in range(steps):
        with common.rng_context():
            state, metrics = trainer.train_step(state, trainer.device_batch(next(train_iter)))
        losses.append(float(metrics["train/bpd"]))
        snapshots.append(trainer.to_host((state.params, state.opt_state)))
    sharded = [p for p in jax.tree.leaves(state.params) if p.sharding.spec != P()]
    return np.asarray(losses), snapshots, len(sharded), finite_checks(trainer, state)


def finite_checks(trainer, state) -> list[bool]:
    """`state_is_finite` of the state, and of it with one NaN in the last element of its
    largest parameter (on one device's shard only, where fsdp splits it)."""
    params = jax.device_get(state.params)
    leaves, treedef = jax.tree.flatten(params)
    big = max(range(len(leaves)), key=lambda i: leaves[i].size)
    leaves[big] = leaves[big].copy()
    leaves[big].reshape(-1)[-1] = np.nan
    poisoned = jax.device_put(jax.tree.unflatten(treedef, leaves),
                              jax.tree.map(lambda p: p.sharding, state.params))
    return [trainer.state_is_finite(state),
            trainer.state_is_finite(state.replace(params=poisoned))]


def max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def value_error(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return ""


def weight_norm_init(devices) -> dict:
    """PixelCNN++ params initialized on 8 images over `devices`.

    Without resnet blocks (cheap to compile) it still chains four weight-normed
    layers, each normalized with statistics of its input over the whole init batch.
    """
    cfg = smoke_config()
    cfg.model = ml_collections.ConfigDict(
        {"name": "pixelcnn_pp", "num_classes": 0, "ordering": "raster", "features": 4,
         "num_resnets": 0, "num_resolutions": 1, "num_mixtures": 1, "dropout_rate": 0.0})
    cfg.data.update(name="random", shape=(4, 4, 3), num_levels=16)
    model = jaxar.build_model(cfg)
    trainer = train.Trainer(model, cfg, devices)
    train_iter, _ = data.create_datasets(cfg, 0, 1)
    state = trainer.init_state(jax.random.PRNGKey(0), train_iter.split.get(np.arange(8)))
    return trainer.to_host(state.params)


def meshes(out: pathlib.Path) -> None:
    devices = jax.devices()
    assert len(devices) == 8, devices
    host_state = initial_state(smoke_config())
    results = {}
    one, snaps_one, _, _ = run_steps(smoke_config(), devices[:1], host_state)
    for name, mesh in {"8x1": (8, 1), "4x2": (4, 2)}.items():
        cfg = smoke_config()
        cfg.mesh.update(data=mesh[0], fsdp=mesh[1])
        losses, snaps, num_sharded, finite = run_steps(cfg, devices, host_state)
        results[name] = {
            "loss_diff": float(np.max(np.abs(losses - one))),
            "first_step_diff": max_diff(snaps[0], snaps_one[0]),
            "last_step_diff": max_diff(snaps[-1], snaps_one[-1]),
            "sharded_param_leaves": num_sharded,
            "state_is_finite": finite,
        }
    # The first global batch of 8 as 2 micro-batches of 4, on 4 devices, against one
    # batch of 8 on one device.
    accum, snaps_accum, _, _ = run_steps(smoke_config(grad_accum_steps=2), devices[:4], host_state,
                                      steps=1)
    results["grad_accum"] = {"loss_diff": float(abs(accum[0] - one[0])),
                             "param_diff": max_diff(snaps_accum[0], snaps_one[0])}
    model = jaxar.build_model(smoke_config())
    results["errors"] = {
        "batch_12_on_8": value_error(lambda: train.Trainer(model, smoke_config(batch_size=12))),
        "accum_2_on_8": value_error(
            lambda: train.Trainer(model, smoke_config(grad_accum_steps=2))),
        "mesh_3": value_error(lambda: sharding.make_mesh({"data": 3, "fsdp": 1})),
    }
    wn_one, wn_eight = weight_norm_init(devices[:1]), weight_norm_init(devices)
    results["weight_norm_init"] = {
        "diff": max_diff(wn_one, wn_eight),
        "g_leaves": sum("'g'" in jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(wn_one)[0]),
    }
    out.write_text(json.dumps(results, indent=2))


def train_run(config_json: str, workdir: str, out: pathlib.Path) -> None:
    cfg = ml_collections.ConfigDict(json.loads(pathlib.Path(config_json).read_text()))
    cfg.data.shape = tuple(cfg.data.shape)
    state = train.train_and_evaluate(cfg, workdir)
    host = jax.device_get((state.params, state.ema_params))
    leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(host))}
    np.savez(out, num_devices=len(jax.devices()), **leaves)


if __name__ == "__main__":
    job, *args = sys.argv[1:]
    if job == "meshes":
        meshes(pathlib.Path(args[0]))
    else:
        train_run(args[0], args[1], pathlib.Path(args[2]))

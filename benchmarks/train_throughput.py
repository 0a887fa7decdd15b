"""Train-step throughput of the convolutions: fast paths vs the plain masked one, one run.

  python benchmarks/train_throughput.py                    # the configs below
  python benchmarks/train_throughput.py --rounds 5 --configs experiments/pixelcnn_mnist.py:seed
  python benchmarks/train_throughput.py --configs experiments/pixelcnn_pp_cifar10.py:paper --batch 4
  python benchmarks/train_throughput.py --out train_throughput.json

For each config the same model is built once per path with the same initial
parameters: `model.conv_impl = "plain"` (dense kernel times mask,
`lax.conv_general_dilated`), "im2col" everywhere (masked taps never computed,
`jaxar.nn.fast_conv`), "split" (masked convolutions as two dense XLA convolutions over
their live rows; other layers as "auto"; only for models with masked convolutions)
and "auto" (the default: per backend, what `jaxar.nn.fast_conv` measured fastest).
PixelCNN++ and PixelSNAIL have no masked taps: there "im2col" runs their stride-1
shifted convolutions with XLA's forward and gathered gradients. A train step is the
loss (mean bits/dim of a random batch of the config's shape and batch size), its
gradient and an Adam update, jitted. All steps are compiled and run first, then timed in
turn for `--rounds` rounds (so load from other processes hits all alike); the median
per path is reported, with the ratios to plain and the largest relative difference
(L2, per leaf) of the losses and gradients from plain's. `--out FILE` writes every figure
as JSON (benchmarks/common.py's header first).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402
from benchmarks.common import IMPLS, MASKED, random_batch  # noqa: E402
from jaxar import models as models_lib  # noqa: E402
from jaxar.models import common  # noqa: E402
from jaxar.nn import fast_conv  # noqa: E402

CONFIGS = [
    "experiments/pixelcnn_mnist.py:seed",
    "experiments/pixelcnn_mnist.py:default",
    "experiments/gated_pixelcnn_mnist.py:default",
    "experiments/pixelcnn_pp_cifar10.py:default",
    "experiments/pixelsnail_cifar10.py:default",
]


def make_step(model, optimizer):
    def loss_fn(params, batch):
        lp = models_lib.apply_log_prob(model, {"params": params}, batch["x"], batch["labels"],
                                       batch["cond"])
        nll = -lp.reshape(lp.shape[0], -1).sum(-1)
        return models_lib.nats_to_bits_per_dim(nll, model.event_shape).mean()

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    return jax.jit(step)


def compare(spec: str, rounds: int, batch_size: int | None = None) -> dict | None:
    """Times a train step per conv_impl of one config; prints and returns the figures
    (None: the model has no conv_impl switch)."""
    cfg = jaxar.load_config(str(ROOT / spec))
    batch_size = batch_size or cfg.train.batch_size
    if not hasattr(jaxar.build_model(cfg), "conv_impl"):
        print(f"  {spec}: skipped (the model's layers have no conv_impl switch)", flush=True)
        return None
    impls = IMPLS if cfg.model.name in MASKED else tuple(i for i in IMPLS if i != "split")
    models, steps = {}, {}
    for impl in impls:
        cfg.model.conv_impl = impl
        models[impl] = jaxar.build_model(cfg)
        steps[impl] = make_step(models[impl], optax.adam(cfg.train.learning_rate))
    batch = random_batch(models["plain"], batch_size)
    params = jaxar.init_variables(models["plain"], cfg, jax.random.key(0),
                                  x=batch["x"][: cfg.train.init_batch_size])["params"]
    opt_state = optax.adam(cfg.train.learning_rate).init(params)
    out, first_s = {}, {}
    for impl, step in steps.items():  # compile, and keep one step's loss and gradients
        first_s[impl], out[impl] = bench.timed(lambda step=step: step(params, opt_state, batch))
        print(f"    compiled + 1 step ({impl}): {first_s[impl]:.1f} s", flush=True)
    # Every step from the same state: the loss (its third output) is the same each round.
    timed = bench.time_interleaved(
        {impl: (lambda step=step: float(step(params, opt_state, batch)[2]))
         for impl, step in steps.items()}, rounds)
    seconds = {impl: r["seconds"] for impl, r in timed.items()}
    rate = {impl: batch_size / statistics.median(s) for impl, s in seconds.items()}
    diff = max(
        float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30))
        for impl in impls
        for a, b in zip(jax.tree.leaves(out[impl][2:]), jax.tree.leaves(out["plain"][2:]),
                        strict=True)
    )
    print(f"  {spec}  batch {batch_size}, {models['plain'].event_shape}\n    "
          + " | ".join(f"{impl} {rate[impl]:7.2f} images/s" for impl in impls)
          + "\n    "
          + " | ".join(f"{i}/plain {rate[i] / rate['plain']:5.2f}x" for i in impls if i != "plain")
          + f" | loss/grad relative difference to plain <= {diff:.1e}\n"
          f"    step seconds: " + ", ".join(f"{i} {fmt(seconds[i])}" for i in impls),
          flush=True)
    return {"config": spec, "model": cfg.model.name, "batch": batch_size,
            "event_shape": list(models["plain"].event_shape),
            "images_per_s": rate, "step_seconds": seconds, "first_step_s": first_s,
            "max_relative_difference_to_plain": diff}


def fmt(values):
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated config paths[:variant]; missing files are skipped")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per path")
    parser.add_argument("--batch", type=int,
                        help="batch size (default: each config's; paper sizes need less)")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.batch is not None and args.batch < 1):
        raise ValueError("--rounds and --batch must be >= 1")
    header = bench.run_header(__file__, argv, args.out)
    auto = fast_conv.resolve_impl("auto")
    shifted = fast_conv.resolve_impl("auto", shifted=True)
    report = {"rounds": args.rounds, "auto": {"masked": auto, "shifted": shifted}, "configs": []}
    bench.log(f"{bench.machine()}; conv_impl='auto' here: {auto} (shifted convolutions: "
              f"{shifted})")
    for spec in args.configs.split(","):
        if not (ROOT / spec.split(":")[0]).exists():
            print(f"  {spec}: skipped (no such config file)")
            continue
        with common.rng_context():
            row = compare(spec, args.rounds, args.batch)
        if row is not None:
            report["configs"].append(row)
            if args.out:
                bench.write_json(args.out, report, header)
    return report


if __name__ == "__main__":
    main()

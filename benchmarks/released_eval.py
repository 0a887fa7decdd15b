"""Evaluation and sampling speed of the released architectures on this machine.

  launch/env.sh python benchmarks/released_eval.py --out released_eval.json
  launch/env.sh python benchmarks/released_eval.py --rounds 5 --no_sampling

For each config (default: the `paper` configs of PixelCNN++ and PixelSNAIL, which equal
the released models, `jaxar-import`), with random weights in the released layout
(`jaxar.init_variables` on a small random batch; speed does not depend on the values):

- `jaxar.log_prob` (jitted) on a random batch of `--batch` images: the first call (compile
  and run) timed apart, then `--rounds` calls, each waited for; the median gives seconds
  per batch, images/s and seconds per 1,000 images. This is the network and likelihood
  `jaxar-eval` runs (`train.jit_eval_step` adds only the per-example sums).
- `--num_samples` samples with `jaxar.sample(method="cached")`'s program, compiled ahead of
  time (compile timed apart), then drawn once, every step of it.

Prints the CPU (/proc/cpuinfo "model name"), core count, jax version, and one line per
figure; `--out FILE` writes them as JSON (benchmarks/common.py's header first). The
original TensorFlow code's evaluation is not run here: it needs TensorFlow, which jaxar
does not depend on.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Run as a script, this file's folder would come first on sys.path, where a benchmark's
# module name can shadow a package jax imports (`compression`); the repository instead,
# so that `benchmarks.common` imports.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxar  # noqa: E402
from benchmarks import common  # noqa: E402
from jaxar import sampling  # noqa: E402

CONFIGS = ("experiments/pixelcnn_pp_cifar10.py:paper", "experiments/pixelsnail_cifar10.py:paper")


def released_model(spec: str, init_batch: int):
    """(cfg, model, variables, seconds to initialize) for a config, random weights."""
    cfg = jaxar.load_config(str(ROOT / spec))
    cfg.train.init_batch_size = init_batch
    model = jaxar.build_model(cfg)
    start = common.now()
    variables = jax.block_until_ready(jaxar.init_variables(model, cfg, jax.random.key(0)))
    leaves = jax.tree.leaves(variables["params"])
    # The released layout: every parameter is one of the released layers' (V, g, b).
    if len(model.released_layers()) * 3 != len(leaves):
        raise SystemExit(f"{spec}: its parameters are not the released layers'")
    return cfg, model, variables, common.now() - start


def time_log_prob(model, variables, batch: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, model.num_levels, (batch, *model.event_shape)), jnp.int32)
    run = lambda: jax.block_until_ready(jaxar.log_prob(model, variables, x))
    start = common.now()
    run()
    first_s = common.now() - start
    seconds = []
    for _ in range(rounds):
        start = common.now()
        run()
        seconds.append(common.now() - start)
    per_batch = statistics.median(seconds)
    return {"batch": batch, "first_call_s": first_s, "seconds": seconds,
            "median_s_per_batch": per_batch, "images_per_s": batch / per_batch,
            "s_per_1000_images": 1000 * per_batch / batch}


def time_cached_sampling(model, variables, num_samples: int) -> dict:
    shape = (num_samples, *model.event_shape)
    zeros = jnp.zeros(shape, jnp.int32)
    # What jaxar.sample runs after its checks: nothing known, temperature 1.
    args = (variables, jax.random.key(1), None, model.derive_cond(zeros), jnp.float32(1.0),
            zeros, jnp.zeros(shape, bool))
    start = common.now()
    compiled = sampling.jitted_sample.lower(model, "cached", *args).compile()
    compile_s = common.now() - start
    start = common.now()
    samples = jax.block_until_ready(compiled(*args))
    seconds = common.now() - start
    return {"num_samples": num_samples, "compile_s": compile_s, "seconds": seconds,
            "samples_per_s": num_samples / seconds,
            "distinct_values": int(np.unique(samples).size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated config specs, relative to the repository")
    parser.add_argument("--batch", type=int, default=16, help="images per log_prob call")
    parser.add_argument("--rounds", type=int, default=3, help="timed log_prob calls")
    parser.add_argument("--init_batch", type=int, default=2,
                        help="images of the data-dependent initialization")
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--no_sampling", action="store_true")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    args = parser.parse_args()
    header = common.run_header(__file__, None, args.out)
    report = {"configs": {}}
    common.log(common.machine())
    for spec in args.configs.split(","):
        cfg, model, variables, init_s = released_model(spec, args.init_batch)
        count = int(sum(np.size(p) for p in jax.tree.leaves(variables["params"])))
        row = report["configs"][spec] = {"parameters": count, "init_s": init_s}
        common.log(f"{spec}: {count:,} parameters (initialized in {init_s:.1f} s)")
        lp = row["log_prob"] = time_log_prob(model, variables, args.batch, args.rounds)
        common.log(f"  log_prob, batch {lp['batch']}: {lp['median_s_per_batch']:.2f} s per batch "
                   f"(median of {args.rounds}: {', '.join(f'{s:.2f}' for s in lp['seconds'])}), "
                   f"{lp['images_per_s']:.2f} images/s, {lp['s_per_1000_images']:.0f} s per "
                   f"1,000 images (first call, compile included: {lp['first_call_s']:.1f} s)")
        if not args.no_sampling:
            s = row["cached_sampling"] = time_cached_sampling(model, variables,
                                                              args.num_samples)
            common.log(f"  cached sampling, {s['num_samples']} samples: {s['seconds']:.1f} s "
                       f"(compile {s['compile_s']:.1f} s)")
        if args.out:
            common.write_json(args.out, report, header)
    if args.out:
        common.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()

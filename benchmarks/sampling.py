"""Cached vs naive vs fixed-point sampling speed of the convolutional image models, one run.

  python benchmarks/sampling.py                  # every config in CONFIGS
  python benchmarks/sampling.py --naive_max_steps 200 --batch 16 --out sampling.json
  python benchmarks/sampling.py --configs experiments/pixelcnn_pp_cifar10.py:default \
      --naive_max_steps 48

Both methods run through `jaxar.cli.sample` on the same model, variables (random
init: speed does not depend on the weights), key and batch. Each is compiled
first by a warm-up call (for "naive", with every dimension known, so its
`lax.cond` skips every network pass: same executable, no generation), then
timed once with `block_until_ready`. "naive" reruns the whole network at every
step, so its cost per step does not depend on the step: with
`--naive_max_steps` below H*W*C it times that many first steps only (the rest
are known, hence skipped) and extrapolates linearly, which the output says.
Both methods' samples are compared: all of them in a full run, the first
steps' (the rest known) in an extrapolated one. "fixed_point" (Jacobi iteration,
`jaxar.sampling.fixed_point`) is compiled ahead of time (`lower().compile()`), then timed
once on the whole sample; the output gives its network passes to converge (at most
H*W*C, each one parallel pass over the whole batch) and checks that its samples equal
the cached ones, and how many dimensions of each one full-network pass changes (0: exactly
the full network's ancestral sample; a cached sample that differs by a float rounding flip
on a bin boundary shows there). `--out FILE` writes every figure as JSON (benchmarks/common.py's
header first).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402
from jaxar import sampling  # noqa: E402
from jaxar.models import common  # noqa: E402

CONFIGS = [
    "experiments/pixelcnn_mnist.py:default",
    "experiments/gated_pixelcnn_mnist.py:default",
    "experiments/pixelcnn_pp_cifar10.py:default",
    "experiments/pixelsnail_cifar10.py:default",
]


FIXED_POINT = sampling.jitted_fixed_point
timed = bench.timed


def compare(spec: str, batch: int, naive_max_steps: int) -> dict:
    """Times the three methods on one config and prints their lines; returns the figures."""
    cfg = jaxar.load_config(str(ROOT / spec))
    model = jaxar.build_model(cfg)
    variables = jaxar.init_variables(model, cfg, jax.random.key(0))
    shape = (batch, *model.event_shape)
    size = int(np.prod(model.event_shape))
    labels = jnp.arange(batch, dtype=jnp.int32) % model.num_classes if model.num_classes else None
    cond = model.derive_cond(jnp.zeros(shape, jnp.int32))  # None: unconditional
    key = jax.random.key(1)

    def sample(method, **kw):
        return jaxar.sample(
            model, variables, key, batch, labels=labels, cond=cond, method=method, **kw
        )

    zeros = jnp.zeros(shape, jnp.int32)
    compile_naive, _ = timed(lambda: sample("naive", known=zeros, known_mask=jnp.ones(shape, bool)))
    compile_cached, _ = timed(lambda: sample("cached"))  # compile and a first run
    cached_s, cached = timed(lambda: sample("cached"))
    steps = min(naive_max_steps, size)
    if steps == size:
        naive_s, naive = timed(lambda: sample("naive"))
        same = bool(np.array_equal(naive, cached))
        note = f"identical samples: {same}"
    else:
        later = jnp.broadcast_to(jnp.asarray(jaxar.ordering(model) >= steps), shape)
        prefix_s, naive = timed(lambda: sample("naive", known=zeros, known_mask=later))
        naive_s = prefix_s * size / steps
        same = bool(np.array_equal(naive, sample("cached", known=zeros, known_mask=later)))
        note = (
            f"naive EXTRAPOLATED from its first {steps} of {size} steps ({prefix_s:.2f} s); "
            f"identical samples on those steps: {same}"
        )
    fp_args = (variables, key, labels, cond, jnp.float32(1.0), zeros, jnp.zeros(shape, bool))
    compile_fp, fp_compiled = timed(lambda: FIXED_POINT.lower(model, *fp_args).compile())
    fp_s, (fp, passes) = timed(lambda: fp_compiled(*fp_args))
    row = {
        "config": spec, "model": cfg.model.name, "event_shape": list(model.event_shape),
        "batch": batch, "dimensions": size, "conv_impl": getattr(model, "conv_impl", None),
        "cached_s": cached_s, "naive_s": naive_s, "naive_timed_steps": steps,
        "naive_extrapolated": steps < size, "speedup": naive_s / cached_s,
        "naive_identical_to_cached": same, "fixed_point_s": fp_s,
        "fixed_point_passes": int(passes),
        "fixed_point_identical_to_cached": bool(np.array_equal(fp, cached)),
        "unsolved_dims": {"fixed_point": bench.unsolved_dims(model, fp_args, fp),
                          "cached": bench.unsolved_dims(model, fp_args, cached)},
        "compile_s": {"naive": compile_naive, "cached": compile_cached,
                      "fixed_point": compile_fp},
    }
    impl = f", conv_impl {model.conv_impl!r}" if hasattr(model, "conv_impl") else ""
    print(
        f"  {spec} {model.event_shape}, batch {batch}{impl}\n"
        f"    naive {naive_s:8.2f} s {batch / naive_s:8.3f} samples/s | "
        f"cached {cached_s:6.3f} s {batch / cached_s:8.2f} samples/s | "
        f"speed-up {naive_s / cached_s:6.1f}x | {note}\n"
        f"    fixed_point {fp_s:6.3f} s {batch / fp_s:8.2f} samples/s | "
        f"{int(passes)} network passes for {size} dimensions | "
        f"identical to cached: {row['fixed_point_identical_to_cached']} (dims one "
        f"full-network pass changes: fixed_point {row['unsolved_dims']['fixed_point']}, "
        f"cached {row['unsolved_dims']['cached']})\n"
        f"    first calls (compile): naive {compile_naive:.1f} s, cached {compile_cached:.1f} s, "
        f"fixed_point {compile_fp:.1f} s (compile only)",
        flush=True,
    )
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configs")
    parser.add_argument("--batch", type=int, default=16, help="samples drawn at once")
    parser.add_argument(
        "--naive_max_steps",
        type=int,
        default=1 << 30,
        help="time this many naive steps and extrapolate (default: all)",
    )
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)
    bench.log(bench.machine())
    report = {"configs": []}
    with common.rng_context():
        for spec in args.configs.split(","):
            report["configs"].append(compare(spec, args.batch, args.naive_max_steps))
            if args.out:
                bench.write_json(args.out, report, header)
    return report


if __name__ == "__main__":
    main()

"""PixelSNAIL's train step: its blocked causal attention against the full masked softmax.

  python benchmarks/attention.py                                    # `default`, batch 16
  python benchmarks/attention.py --config experiments/pixelsnail_cifar10.py:paper --batch 1 \
      --rounds 3 --blocks 64
  python benchmarks/attention.py --rounds 10 --blocks 128,64 --out attention.json

`jaxar.models.pixelsnail.causal_attention` computes, per block of `QUERY_BLOCK` queries
in generation order, only the logits of the keys generated before the block.
`masked_attention` below is the attention it replaced: all `[N, N]` logits, masked. The
trainer's own jitted step (`jaxar.training.train.Trainer.train_step`: dropout, Adam,
EMA; built, compiled and timed by benchmarks/common.py's `pp_jax_step` and
`time_interleaved`) is compiled for the full attention and for each `--blocks` size,
two steps of each, built in the order a, b, ..., b, a (a step built first ran slower in
some runs on these shared cores), then all run in turn for `--rounds` rounds from the
same state and batch; each step's median and losses are printed, and per block size
the ratio of the full attention's median (both its steps) to the blocks' (the losses
agree up to float rounding: the attention weights are the same). `--out FILE` writes the
figures as JSON (benchmarks/common.py's header first).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import common as bench  # noqa: E402
from jaxar.models import common, pixelsnail  # noqa: E402

BLOCKED = pixelsnail.causal_attention


def masked_attention(q_BHWK, k_BHWK, v_BHWV, steps_HW, num_heads):
    """Every pixel over the pixels generated strictly before it: the full `[N, N]`
    logits of every head, the later ones masked before the softmax."""
    batch, height, width, _ = q_BHWK.shape
    heads = lambda a: a.reshape(batch, height * width, num_heads, -1)
    q, k, v = heads(q_BHWK), heads(k_BHWK), heads(v_BHWV)
    flat = steps_HW.ravel()
    visible_NM = flat[:, None] > flat[None, :]
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
    weights = jax.nn.softmax(jnp.where(visible_NM, logits, -1e30), axis=-1)
    out = jnp.einsum("bhnm,bmhd->bnhd", weights, v) * visible_NM.any(1)[:, None, None]
    return out.reshape(batch, height, width, -1)


def jax_step(cfg, host_batch, variant: str):
    """`bench.pp_jax_step` (step, compile seconds, parameters) with `variant`'s attention
    ("full" or a query block size) in place while the step is traced."""
    saved = pixelsnail.causal_attention, pixelsnail.QUERY_BLOCK
    try:
        if variant == "full":
            pixelsnail.causal_attention = masked_attention
        else:
            pixelsnail.causal_attention, pixelsnail.QUERY_BLOCK = BLOCKED, int(variant)
        return bench.pp_jax_step(cfg, host_batch)
    finally:
        pixelsnail.causal_attention, pixelsnail.QUERY_BLOCK = saved


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/pixelsnail_cifar10.py:default")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--blocks", default=str(pixelsnail.QUERY_BLOCK),
                        help="comma-separated query block sizes")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)
    if args.rounds < 1 or args.batch < 1:
        raise ValueError("--rounds and --batch must be >= 1")
    cfg, host_batch = bench.pp_batch_and_config(args.config, args.batch)
    if cfg.model.name != "pixelsnail":
        raise ValueError(f"--config must be a PixelSNAIL config, got model {cfg.model.name!r}")
    blocks = args.blocks.split(",")
    if not all(b.isdigit() and int(b) >= 1 for b in blocks):
        raise ValueError(f"--blocks must be comma-separated ints >= 1, got {args.blocks!r}")
    variants = ["full", *blocks]
    steps, compiles = {}, {}
    with common.rng_context():
        for n, variant in enumerate(variants + variants[::-1]):
            steps[f"{variant} #{n}"], compile_s, _ = jax_step(cfg, host_batch, variant)
            compiles[f"{variant} #{n}"] = compile_s
            print(f"  compiled {variant} #{n}: {compile_s:.1f} s", flush=True)
        timed = bench.time_interleaved(steps, args.rounds)
    bench.report(f"{bench.cpu_model()}, jax {jax.__version__}; {args.config}, batch "
              f"{args.batch}", args.batch, timed,
              [(f"{v} #{n}", "full #0") for n, v in enumerate(variants) if n])
    median = {v: statistics.median([s for name, r in timed.items()
                                    if name.split(" #")[0] == v for s in r["seconds"]])
              for v in variants}
    print("  " + " | ".join(f"blocks of {v}: {median['full'] / median[v]:.2f}x full"
                            for v in variants[1:]), flush=True)
    report = {"config": args.config, "batch": args.batch, "rounds": args.rounds,
              "median_step_s": median,
              "speedup_over_full": {v: median["full"] / median[v] for v in variants[1:]},
              "steps": {name: {**r, "compile_s": compiles[name]} for name, r in timed.items()}}
    if args.out:
        bench.write_json(args.out, report, header)
    return report


if __name__ == "__main__":
    main()

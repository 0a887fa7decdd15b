"""PixelSNAIL's train step: its blocked causal attention against the full masked softmax.

  python benchmarks/attention.py                                    # `default`, batch 16
  python benchmarks/attention.py --config experiments/pixelsnail_cifar10.py:paper --batch 1 \
      --rounds 3 --blocks 64

`jaxar.models.pixelsnail.causal_attention` computes, per block of `QUERY_BLOCK` queries
in generation order, only the logits of the keys generated before the block.
`masked_attention` below is the attention it replaced: all `[N, N]` logits, masked. The
trainer's own jitted step (`jaxar.training.train.Trainer.train_step`: dropout, Adam,
EMA) is compiled for the full attention and for each `--blocks` size, two steps of each,
built in the order a, b, ..., b, a (a step built first ran slower in some runs on
these shared cores), then all run in turn for `--rounds` rounds from the same state
and batch; the medians and the ratios to the full attention are printed, with each
step's loss after the last round (equal up to float rounding: the attention weights
are the same).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import accelerator  # noqa: E402
from benchmarks.train_throughput import random_batch  # noqa: E402
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


def compiled_step(cfg, host_batch, variant: str):
    """(compiled trainer step, its initial state, its device batch) with `variant`'s
    attention ("full" or a query block size) in place while it is traced."""
    saved = pixelsnail.causal_attention, pixelsnail.QUERY_BLOCK
    try:
        if variant == "full":
            pixelsnail.causal_attention = masked_attention
        else:
            pixelsnail.causal_attention, pixelsnail.QUERY_BLOCK = BLOCKED, int(variant)
        _, trainer = accelerator.build(cfg)
        row = accelerator.compile_step(trainer, host_batch)
    finally:
        pixelsnail.causal_attention, pixelsnail.QUERY_BLOCK = saved
    state = trainer.init_state(jax.random.PRNGKey(cfg.seed), host_batch)
    return row, state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/pixelsnail_cifar10.py:default")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--blocks", default=str(pixelsnail.QUERY_BLOCK),
                        help="comma-separated query block sizes")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        raise ValueError("--rounds and --batch must be >= 1")
    cfg = jaxar.load_config(str(ROOT / args.config))
    if cfg.model.name != "pixelsnail":
        raise ValueError(f"--config must be a PixelSNAIL config, got model {cfg.model.name!r}")
    cfg.train.batch_size = args.batch
    cfg.train.init_batch_size = min(cfg.train.init_batch_size, args.batch)
    batch = random_batch(jaxar.build_model(cfg), args.batch)
    host_batch = {k: np.asarray(v) for k, v in batch.items() if v is not None}
    variants = ["full", *args.blocks.split(",")]
    order = variants + variants[::-1]
    print(f"{accelerator.cpu_model()}, jax {jax.__version__}; {args.config}, batch {args.batch}")
    steps = []
    with common.rng_context():
        for variant in order:
            row, state = compiled_step(cfg, host_batch, variant)
            steps.append({"variant": variant, "row": row, "state": state, "seconds": []})
            print(f"  compiled {variant:>4}: {row['compile_s']:.1f} s", flush=True)
        for _ in range(args.rounds):
            for step in steps:
                start = time.perf_counter()
                step["state"], metrics = jax.block_until_ready(
                    step["row"]["_compiled"](step["state"], step["row"]["_batch"]))
                step["seconds"].append(time.perf_counter() - start)
                step["loss"] = float(metrics["train/bpd"])
    median = {v: statistics.median([s for step in steps if step["variant"] == v
                                    for s in step["seconds"]]) for v in variants}
    for step in steps:
        print(f"  {step['variant']:>4}: {statistics.median(step['seconds']):.3f} s/step, "
              f"loss after {args.rounds + 1} steps {step['loss']:.6f}")
    print("  " + " | ".join(f"blocks of {v}: {median['full'] / median[v]:.2f}x full"
                            for v in variants[1:]), flush=True)


if __name__ == "__main__":
    main()

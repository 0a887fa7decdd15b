"""Cached vs naive generation speed of the sequence models, measured in one run.

  python benchmarks/sampling_sequences.py        # WaveNet L=1024, 4096; Transformer 28x28
  python benchmarks/sampling_sequences.py --naive_max_steps 4096   # naive all in full
  python benchmarks/sampling_sequences.py --out sampling_sequences.json

Both methods run through `jaxar.cli.sample` on the same model, variables, key and batch.
Each is compiled first by a warm-up call (for "naive", with every dimension known, so
that its `lax.cond` skips all network passes: same executable, no generation), then
timed once with `block_until_ready`. "naive" reruns the whole network at every step,
so its cost per step does not depend on the step: for events with more than
`--naive_max_steps` dimensions (default 1024: WaveNet at L=4096, about 6 minutes in
full on 2 cores) it times the first that many steps only (the rest are known, hence
skipped) and extrapolates linearly, which the output says. Runs measured in full
also compare the samples of both methods (they must be identical). `--out FILE` writes
every figure as JSON (benchmarks/common.py's header first).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402


def build(name: str, shape, num_levels: int, **model):
    cfg = ml_collections.ConfigDict({
        "model": {"name": name, **model},
        "data": {"shape": tuple(shape), "num_levels": num_levels},
        "train": {"init_batch_size": 2},
    })
    model = jaxar.build_model(cfg)
    return model, jaxar.init_variables(model, cfg, jax.random.key(0))


timed = bench.timed


def compare(label: str, model, variables, batch: int, naive_max_steps: int) -> dict:
    """Times both methods and prints one line; returns the figures."""
    shape = (batch, *model.event_shape)
    size = int(np.prod(model.event_shape))
    key = jax.random.key(1)
    sample = lambda method, **kw: jaxar.sample(model, variables, key, batch, method=method, **kw)
    zeros = jnp.zeros(shape, jnp.int32)
    sample("naive", known=zeros, known_mask=jnp.ones(shape, bool))  # compile only
    sample("cached")  # compile (and a first run)
    cached_s, cached = timed(lambda: sample("cached"))

    steps = min(naive_max_steps, size)
    same = None  # compared in full runs only
    if steps == size:
        naive_s, naive = timed(lambda: sample("naive"))
        same = bool(np.array_equal(naive, cached))
        note = f"identical samples: {same}"
    else:
        # Dimensions generated at steps >= `steps` are known: the naive loop skips them.
        later = jnp.asarray(jaxar.ordering(model) >= steps)
        prefix_s, _ = timed(lambda: sample("naive", known=zeros,
                                           known_mask=jnp.broadcast_to(later, shape)))
        naive_s = prefix_s * size / steps
        note = f"naive EXTRAPOLATED from its first {steps} of {size} steps ({prefix_s:.2f} s)"
    rate = lambda seconds: batch * size / seconds
    print(f"  {label:<18} naive {naive_s:9.2f} s {rate(naive_s):9.1f} dims/s | "
          f"cached {cached_s:7.3f} s {rate(cached_s):9.1f} dims/s | "
          f"speed-up {naive_s / cached_s:7.1f}x | {note}", flush=True)
    return {"model": label.split(" ")[0], "label": label, "event_shape": list(model.event_shape),
            "batch": batch, "dimensions": size, "cached_s": cached_s, "naive_s": naive_s,
            "naive_timed_steps": steps, "naive_extrapolated": steps < size,
            "speedup": naive_s / cached_s, "naive_identical_to_cached": same}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="samples drawn at once")
    parser.add_argument("--lengths", default="1024,4096", help="WaveNet sequence lengths")
    parser.add_argument("--naive_max_steps", type=int, default=1024,
                        help="longer events: time this many naive steps and extrapolate")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)
    report = {"runs": []}
    save = lambda: bench.write_json(args.out, report, header) if args.out else None

    bench.log(f"{bench.machine()}, batch {args.batch}")
    wavenet = dict(residual_channels=32, gate_channels=32, skip_channels=64, head_channels=128,
                   num_stacks=2, layers_per_stack=10)
    for length in map(int, args.lengths.split(",")):
        model, variables = build("wavenet", (length,), 256, **wavenet)
        if length == int(args.lengths.split(",")[0]):
            print(f"WaveNet: 256-level categorical, {len(model.dilations)} residual blocks "
                  f"(2 stacks of dilations 1..512, receptive field {model.receptive_field}), "
                  f"32 residual / 64 skip / 128 head channels")
        report["runs"].append(compare(f"WaveNet L={length}", model, variables, args.batch,
                                      args.naive_max_steps))
        save()

    model, variables = build("transformer", (28, 28, 1), 2, features=64, num_heads=4,
                             num_layers=2, likelihood="bernoulli")
    print("Transformer: 2 pre-LN blocks, width 64, 4 heads, learned positions, raster, "
          "Bernoulli")
    report["runs"].append(compare("Transformer 28x28", model, variables, args.batch,
                                  args.naive_max_steps))
    save()
    return report


if __name__ == "__main__":
    main()

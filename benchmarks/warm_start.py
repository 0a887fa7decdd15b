"""Cold vs warm start: seconds from a fresh process to its first finished train step (and
to a finished `jaxar-sample`), without and with JAX's persistent compilation cache.

  python benchmarks/warm_start.py [--configs experiments/pixelcnn_pp_cifar10.py:default,...]
      [--batch 4] [--sample_workdir RUN] [--out warm_start.json]

Each config runs twice in new processes sharing a fresh cache directory
(JAXAR_COMPILATION_CACHE): the first compiles and writes the cache, the second reads
it. The data is synthetic of the config's shape, so no dataset is needed; the batch is
`--batch` (the paper configs' own batches do not fit a small machine's memory). With
`--sample_workdir`, `jaxar-sample --num 1` of that run is timed the same way. `--out FILE`
writes the figures as JSON (benchmarks/common.py's header first).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import common as bench  # noqa: E402

_FIRST_STEP = """
import sys, time
start = float(sys.argv[3])
from jaxar import compilation_cache
compilation_cache.enable()
import jax, numpy as np
import jaxar
from jaxar import data
from jaxar.models.common import rng_context
from jaxar.training import train
cfg = jaxar.load_config(sys.argv[1])
batch = int(sys.argv[2])
cfg.data.update(source="synthetic", name="random", num_train=2 * batch, num_test=batch)
cfg.train.update(batch_size=batch, init_batch_size=batch)
trainer = train.Trainer(jaxar.build_model(cfg), cfg)
train_iter, _ = data.create_datasets(cfg, *trainer.data_shard)
state = trainer.init_state(jax.random.PRNGKey(0), train_iter.split.get(np.arange(batch)))
with rng_context():
    state, metrics = trainer.train_step(state, trainer.device_batch(next(train_iter)))
loss = float(metrics["train/" + trainer.model.loss_metric])
print(f"{time.time() - start:.1f} {loss!r}")
"""


def first_step(config: str, batch: int, env: dict) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", _FIRST_STEP, config, str(batch),
                          repr(time.time())], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-2]), out[-1]


def sample(workdir: str, env: dict, out: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "jaxar.cli.sample", "--workdir", workdir, "--num", "1",
                    "--out", out], env=env, capture_output=True, check=True)
    return time.time() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="experiments/pixelcnn_pp_cifar10.py:default,"
                                        "experiments/pixelcnn_pp_cifar10.py:paper")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sample_workdir", default=None)
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)
    report = {"batch": args.batch, "first_step": []}
    save = lambda: bench.write_json(args.out, report, header) if args.out else None
    bench.log(bench.machine())
    base_env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    for config in args.configs.split(","):
        with tempfile.TemporaryDirectory() as cache:
            env = {**base_env, "JAXAR_COMPILATION_CACHE": cache}
            cold, cold_loss = first_step(config, args.batch, env)
            warm, warm_loss = first_step(config, args.batch, env)
        same = "same loss" if cold_loss == warm_loss else f"losses {cold_loss} != {warm_loss}"
        print(f"{config} (batch {args.batch}): first step cold {cold:.1f} s, warm {warm:.1f} s "
              f"({same})", flush=True)
        report["first_step"].append({"config": config, "cold_s": cold, "warm_s": warm,
                                     "same_loss": cold_loss == warm_loss})
        save()
    if args.sample_workdir:
        with tempfile.TemporaryDirectory() as cache:
            env = {**base_env, "JAXAR_COMPILATION_CACHE": cache}
            out = os.path.join(cache, "x.png")
            cold = sample(args.sample_workdir, env, out)
            warm = sample(args.sample_workdir, env, out)
        print(f"jaxar-sample --num 1 --workdir {args.sample_workdir}: cold {cold:.1f} s, "
              f"warm {warm:.1f} s", flush=True)
        report["sample"] = {"workdir": args.sample_workdir, "cold_s": cold, "warm_s": warm}
        save()
    return report


if __name__ == "__main__":
    main()

"""Input pipeline speed: time to the first batch, batches/s, and a train step's wait for input.

  python benchmarks/input_pipeline.py                       # current checkout
  python benchmarks/input_pipeline.py --old /tmp/old        # and an old one, same run
  python benchmarks/input_pipeline.py --pngs 20000 --batches 200

For each dataset (the embedded MNIST sample; CIFAR-shaped 32x32x3 8-bit synthetic data
held in memory; a folder of `--pngs` generated 32x32 RGB PNGs) and each `data.num_workers`
(0, 1, 2: grain worker processes; a checkout without them runs 0 only), it times
`jaxar.data.create_datasets` up to the first training batch, then `--batches` more
batches. Then it trains the PixelCNN++ `default` network on the CIFAR-shaped data for
`--steps` steps and reports the fraction of the loop spent in `next(iterator)` (the
rest is the step, whose next batch is read while the device computes: jit dispatch is
asynchronous). With `--old DIR` (e.g. `git worktree add /tmp/old <commit>`), the same
measurements run in a subprocess that imports DIR's jaxar, alternating with this one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(dataset: str, folder: str, batch: int, workers: int | None):
    import ml_collections  # noqa: PLC0415

    data = {"embedded": dict(source="embedded", name="mnist", shape=(28, 28, 1), num_levels=2),
            "cifar_shaped": dict(source="synthetic", name="random", shape=(32, 32, 3),
                                 num_levels=256, num_train=10_000, num_test=100),
            "png_folder": dict(source="folder", name="pngs", path=folder, shape=(32, 32, 3),
                               num_levels=256, labels_from_subfolders=False,
                               test_fraction=0.1)}[dataset]
    if workers is not None:
        data["num_workers"] = workers
    return ml_collections.ConfigDict(
        {"seed": 0, "data": data, "train": {"batch_size": batch}, "eval": {"batch_size": batch}})


def _has_workers() -> bool:
    from jaxar import data  # noqa: PLC0415

    return "num_workers" in inspect.signature(data.TrainIterator).parameters


def measure_reading(dataset: str, folder: str, batch: int, batches: int, workers) -> dict:
    from jaxar import data  # noqa: PLC0415

    start = time.perf_counter()
    iterator, _ = data.create_datasets(_config(dataset, folder, batch, workers))
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches / (time.perf_counter() - start)
    getattr(iterator, "close", lambda: None)()
    return {"dataset": dataset, "workers": workers or 0, "first_batch_s": first,
            "batches_per_s": rate}


def measure_wait(steps: int, batch: int, workers) -> dict:
    """Fraction of a PixelCNN++ default training loop spent waiting in `next(iterator)`."""
    import jax  # noqa: PLC0415

    import jaxar  # noqa: PLC0415
    from jaxar import data  # noqa: PLC0415
    from jaxar.models import common  # noqa: PLC0415
    from jaxar.training import train  # noqa: PLC0415

    checkout = pathlib.Path(jaxar.__file__).resolve().parents[1]  # its own experiments
    cfg = jaxar.load_config(str(checkout / "experiments" / "pixelcnn_pp_cifar10.py:default"))
    cfg.data.update(_config("cifar_shaped", "", batch, workers).data)
    cfg.train.batch_size = batch
    model = jaxar.build_model(cfg)
    trainer = train.Trainer(model, cfg)
    iterator, _ = data.create_datasets(cfg)
    state = trainer.init_state(jax.random.PRNGKey(0), iterator.split.get(np.arange(batch)))
    waited = 0.0
    for step in range(steps + 2):  # the first two compile and warm up
        if step == 2:
            jax.block_until_ready(state)
            waited, start = 0.0, time.perf_counter()
        tic = time.perf_counter()
        batch_data = next(iterator)
        waited += time.perf_counter() - tic
        with common.rng_context():
            state, metrics = trainer.train_step(state, trainer.device_batch(batch_data))
        float(metrics["train/bpd"])  # as the trainer's loop does, one step late at most
    total = time.perf_counter() - start
    getattr(iterator, "close", lambda: None)()
    return {"workers": workers or 0, "step_s": total / steps, "input_wait_fraction": waited / total}


def write_pngs(folder: pathlib.Path, count: int) -> None:
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")


def run_all(args, folder: str) -> list[dict]:
    workers = (0, 1, 2) if _has_workers() else (None,)
    rows = []
    for dataset in ("embedded", "cifar_shaped", "png_folder"):
        for w in workers:
            rows.append(measure_reading(dataset, folder, args.batch, args.batches, w))
    if args.steps:
        for w in (0, 2) if _has_workers() else (None,):
            rows.append({"dataset": "pixelcnn_pp default step",
                         **measure_wait(args.steps, args.step_batch, w)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=pathlib.Path, help="an old checkout to compare with")
    parser.add_argument("--pngs", type=int, default=2000, help="PNGs in the folder dataset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="batches timed per run")
    parser.add_argument("--steps", type=int, default=8, help="PixelCNN++ steps (0: none)")
    parser.add_argument("--step_batch", type=int, default=16)
    parser.add_argument("--folder", help=argparse.SUPPRESS)  # the subprocess's
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:  # the measurement process of one checkout
        import jaxar  # noqa: PLC0415

        print(json.dumps({"jaxar": jaxar.__file__, "rows": run_all(args, args.folder)}))
        return
    from benchmarks.accelerator import cpu_model  # noqa: PLC0415

    print(f"{cpu_model()}, {os.cpu_count()} cores; {args.pngs} PNGs, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(pathlib.Path(tmp), args.pngs)
        checkouts = [("new", ROOT)] + ([("old", args.old.resolve())] if args.old else [])
        passthrough = ["--pngs", str(args.pngs), "--batch", str(args.batch), "--batches",
                       str(args.batches), "--steps", str(args.steps), "--step_batch",
                       str(args.step_batch), "--folder", tmp, "--json"]
        for label, root in checkouts:
            env = {**os.environ, "PYTHONPATH": str(root)}
            out = subprocess.run([sys.executable, __file__, *passthrough], env=env, cwd=root,
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{label} ({root}) failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if not result["jaxar"].startswith(str(root)):
                raise SystemExit(f"{root} does not import its own jaxar ({result['jaxar']})")
            for row in result["rows"]:
                figures = ", ".join(f"{k} {v:.3g}" for k, v in row.items()
                                    if k not in ("dataset", "workers"))
                print(f"  {label:3s} {row['dataset']:24s} workers {row['workers']}: {figures}")


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # `benchmarks` importable; PYTHONPATH's jaxar first
    main()

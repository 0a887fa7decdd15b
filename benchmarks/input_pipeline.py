"""Input pipeline speed: time to the first batch, batches/s, and a train step's wait for input.

  python benchmarks/input_pipeline.py                       # current checkout
  python benchmarks/input_pipeline.py --old /tmp/old        # and an old one, same run
  python benchmarks/input_pipeline.py --pngs 2000 --batches 50 --steps 4
  python benchmarks/input_pipeline.py --out input_pipeline.json

Datasets: the embedded MNIST sample; CIFAR-shaped data (`--records` 32x32x3 8-bit
images and labels, one per record) read from an ArrayRecord file the benchmark writes;
a folder of `--pngs` generated 32x32 RGB PNGs. For each and each `data.num_workers`
(0, 1, 2: grain worker processes), a fresh process times the pipeline from
`jaxar.data.create_datasets` (a `TrainIterator` over the ArrayRecord source) to the
first batch, then `--batches` more batches. The folder is timed without a workdir (its
index built in the process) and, with 0 workers, again with the index cached in a
workdir by an earlier run ("index cached"). "per-record" rows read the same batches
through `grain.MapDataset.source(split).batch(...)` (one `split[i]` per row) instead
of the pipeline's batched `Split.get`.

"first step" rows time a run on the folder up to its first training step's loss (a
tiny PixelCNN): reading the data (the index, the init batch and the first batch) and
in all, compilation included; after a first run, a second run in the same workdir
finds the index cached. Then the PixelCNN++ `default` network trains on the folder for
`--steps` steps (batch `--step_batch`) as the trainer's loop does, and the fraction
of the loop spent in its input calls is reported. With `--old DIR` (e.g. `git
worktree add /tmp/old <commit>`), every measurement also runs with DIR's jaxar. `--out
FILE` writes every row as JSON (benchmarks/common.py's header first).
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
DATASETS = ("embedded", "array_record", "png_folder")
IMAGE_SHAPE = (32, 32, 3)
IMAGE_BYTES = int(np.prod(IMAGE_SHAPE))


class ArrayRecordImages:
    """CIFAR-shaped records (the image's 3,072 bytes, then the label's byte) in one
    ArrayRecord file: a source as `jaxar.data.Split` reads one."""

    levels, shape, num_classes = 256, IMAGE_SHAPE, 10

    def __init__(self, path: str):
        from array_record.python import array_record_data_source  # noqa: PLC0415

        self._records = array_record_data_source.ArrayRecordDataSource([path])

    def __len__(self) -> int:
        return len(self._records)

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        records = self._records.__getitems__(np.asarray(indices).tolist())
        rows = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), -1)
        return {"image": rows[:, :IMAGE_BYTES].reshape(-1, *IMAGE_SHAPE),
                "label": rows[:, IMAGE_BYTES].astype(np.int32)}


def write_array_record(path: pathlib.Path, count: int) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    rng = np.random.default_rng(0)
    writer = ArrayRecordWriter(str(path), "group_size:1")  # one record per chunk: random access
    for _ in range(count):
        image = rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
        writer.write(image.tobytes() + bytes([int(rng.integers(0, 10))]))
    writer.close()


def write_pngs(folder: pathlib.Path, count: int) -> None:
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")


def _config(dataset: str, folder: str, batch: int, workers: int):
    import ml_collections  # noqa: PLC0415

    data = {"embedded": dict(source="embedded", name="mnist", shape=(28, 28, 1), num_levels=2),
            "png_folder": dict(source="folder", name="pngs", path=folder, shape=IMAGE_SHAPE,
                               num_levels=256, labels_from_subfolders=False,
                               test_fraction=0.1)}.get(dataset, {})
    return ml_collections.ConfigDict({"seed": 0, "data": {**data, "num_workers": workers},
                                      "train": {"batch_size": batch},
                                      "eval": {"batch_size": batch}})


def _has(function, parameter: str) -> bool:
    return parameter in inspect.signature(function).parameters


def _pipeline(task: dict):
    """The task's TrainIterator (and its workdir argument, if the checkout takes one)."""
    from jaxar import data  # noqa: PLC0415

    cfg = _config(task["dataset"], task["folder"], task["batch"], task["workers"])
    if task["dataset"] == "array_record":
        source = ArrayRecordImages(task["array_record"])
        split = data.Split("array_record/train", source, len(source), IMAGE_SHAPE, 256)
        return data.TrainIterator(split, task["batch"], 0, 0, 1, num_workers=task["workers"])
    takes_workdir = task["workdir"] and _has(data.create_datasets, "workdir")
    return data.create_datasets(cfg, 0, 1, **({"workdir": task["workdir"]} if takes_workdir
                                              else {}))[0]


def _per_record(iterator, batch: int):
    """The pipeline's batches read one `split[i]` at a time and stacked by grain."""
    import grain  # noqa: PLC0415

    records = grain.MapDataset.source(iterator.split).shuffle(seed=0)
    records = records.batch(batch, drop_remainder=True).repeat()
    return iter(records.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def measure_reading(task: dict) -> dict:
    start = time.perf_counter()
    iterator = _pipeline(task)
    batches = _per_record(iterator, task["batch"]) if task["per_record"] else iterator
    first = next(batches)
    first_s = time.perf_counter() - start
    if task["per_record"]:  # the same batches, read another way
        np.testing.assert_array_equal(first["x"], next(iterator)["x"])
    start = time.perf_counter()
    for _ in range(task["batches"]):
        next(batches)
    rate = task["batches"] / (time.perf_counter() - start)
    iterator.close()
    return {"first_batch_s": first_s, "batches_per_s": rate}


def measure_first_step(task: dict) -> dict:
    """Seconds to the first step's loss of a tiny PixelCNN on the folder: the data part
    (index, init batch, first batch) and in all."""
    import jax  # noqa: PLC0415

    import jaxar  # noqa: PLC0415
    from jaxar.models import common  # noqa: PLC0415
    from jaxar.training import train  # noqa: PLC0415

    start = time.perf_counter()
    cfg = jaxar.load_config(str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke"))
    cfg.data.update(_config("png_folder", task["folder"], task["batch"], 0).data)
    cfg.data.num_levels = 2  # the smoke network's Bernoulli likelihood
    cfg.model.update(features=6, head_features=6)  # 3 colour groups
    cfg.train.update(batch_size=task["batch"], init_batch_size=task["batch"])
    trainer = train.Trainer(jaxar.build_model(cfg), cfg)
    data_s = time.perf_counter()
    iterator = _pipeline({**task, "dataset": "png_folder", "workers": 0})
    init_batch = iterator.split.get(np.arange(task["batch"]))
    batch = trainer.device_batch(next(iterator))
    data_s = time.perf_counter() - data_s
    state = trainer.init_state(jax.random.PRNGKey(0), init_batch)
    with common.rng_context():
        _, metrics = trainer.train_step(state, batch)
    float(metrics["train/bpd"])
    iterator.close()
    return {"data_s": data_s, "first_step_s": time.perf_counter() - start}


def measure_wait(task: dict) -> dict:
    """Fraction of a PixelCNN++ default training loop on the folder spent in its input
    calls, looped as the trainer does (`ReadAhead` where the checkout has it)."""
    import jax  # noqa: PLC0415

    import jaxar  # noqa: PLC0415
    from jaxar import data  # noqa: PLC0415
    from jaxar.models import common  # noqa: PLC0415
    from jaxar.training import train  # noqa: PLC0415

    checkout = pathlib.Path(jaxar.__file__).resolve().parents[1]  # its own experiments
    cfg = jaxar.load_config(str(checkout / "experiments" / "pixelcnn_pp_cifar10.py:default"))
    batch = task["step_batch"]
    cfg.data.update(_config("png_folder", task["folder"], batch, task["workers"]).data)
    cfg.train.batch_size = batch
    trainer = train.Trainer(jaxar.build_model(cfg), cfg)
    iterator = _pipeline({**task, "dataset": "png_folder", "batch": batch})
    state = trainer.init_state(jax.random.PRNGKey(0), iterator.split.get(np.arange(batch)))
    if hasattr(data, "ReadAhead"):
        ahead = data.ReadAhead(iterator, trainer.device_batch)
        take, after_step = ahead.take, ahead.read_ahead
    else:
        take, after_step = lambda: trainer.device_batch(next(iterator)), lambda: None
    steps, waited = task["steps"], 0.0
    for step in range(steps + 2):  # the first two compile and warm up
        if step == 2:
            jax.block_until_ready(state)
            waited, start = 0.0, time.perf_counter()
        tic = time.perf_counter()
        device_batch = take()
        waited += time.perf_counter() - tic
        with common.rng_context():
            state, metrics = trainer.train_step(state, device_batch)
        tic = time.perf_counter()
        after_step()
        waited += time.perf_counter() - tic
        float(metrics["train/bpd"])  # as the trainer's loop does, one step late at most
    total = time.perf_counter() - start
    iterator.close()
    return {"step_s": total / steps, "input_fraction": waited / total}


MEASURES = {"read": measure_reading, "first_step": measure_first_step, "wait": measure_wait}


def _base(args, files: dict) -> dict:
    return {**files, "batch": args.batch, "batches": args.batches, "steps": args.steps,
            "step_batch": args.step_batch, "workers": 0, "per_record": False,
            "workdir": None, "needs": None}


def tasks(args, files: dict) -> list[tuple[str, dict]]:
    """Every measurement, each run in a fresh process: (row label, task)."""
    base = _base(args, files)
    rows = []
    for dataset in DATASETS:
        for workers in (0, 1, 2):
            rows.append((dataset, {**base, "kind": "read", "dataset": dataset,
                                   "workers": workers}))
    rows.append(("png_folder, index cached", index_cached(args, files)))
    for dataset in DATASETS:
        rows.append((f"{dataset}, per-record", {**base, "kind": "read", "dataset": dataset,
                                               "per_record": True, "needs": "__getitem__"}))
    run = {**base, "kind": "first_step", "batch": 16, "workdir": files["step_workdir"]}
    rows += [("first step, first run", run), ("first step, second run", run)]
    if args.steps:
        for workers in (0, 2):
            rows.append(("pixelcnn_pp default", {**base, "kind": "wait", "workers": workers}))
    return rows


def index_cached(args, files: dict, batches: int | None = None) -> dict:
    """Reading the folder with its index in a workdir (the checkout must cache one)."""
    return {**_base(args, files), "kind": "read", "dataset": "png_folder",
            "workdir": files["index_workdir"], "needs": "workdir",
            "batches": args.batches if batches is None else batches}


def run_task(root: pathlib.Path, task: dict) -> dict | None:
    """One measurement in a fresh process importing `root`'s jaxar (None: the checkout
    lacks what it measures)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, __file__, "--task", json.dumps(task)], env=env,
                         cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{root} failed on {task}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["jaxar"].startswith(str(root)):
        raise SystemExit(f"{root} does not import its own jaxar ({result['jaxar']})")
    return result["row"]


def _task_main(task: dict) -> None:
    import jaxar  # noqa: PLC0415
    from jaxar import data  # noqa: PLC0415

    lacks = {"__getitem__": not hasattr(data.Split, "__getitem__"),
             "workdir": not _has(data.create_datasets, "workdir"), None: False}[task["needs"]]
    row = None if lacks else MEASURES[task["kind"]](task)
    print(json.dumps({"jaxar": jaxar.__file__, "row": row}))


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=pathlib.Path, help="an old checkout to compare with")
    parser.add_argument("--pngs", type=int, default=20_000, help="PNGs in the folder dataset")
    parser.add_argument("--records", type=int, default=10_000, help="ArrayRecord records")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="batches timed per run")
    parser.add_argument("--steps", type=int, default=8, help="PixelCNN++ steps (0: none)")
    parser.add_argument("--step_batch", type=int, default=16)
    parser.add_argument("--out", help="write every row as JSON")
    parser.add_argument("--task", help=argparse.SUPPRESS)  # one measurement's process
    args = parser.parse_args(argv)
    if args.task:
        _task_main(json.loads(args.task))
        return None
    from benchmarks import common as bench  # noqa: PLC0415

    header = bench.run_header(__file__, argv, args.out)
    report = {"settings": {k: getattr(args, k) for k in (
        "pngs", "records", "batch", "batches", "steps", "step_batch")}, "rows": []}
    bench.log(f"{bench.machine()}; {args.pngs} PNGs, {args.records} ArrayRecord records, "
              f"batch {args.batch}")
    checkouts = [("new", ROOT)] + ([("old", args.old.resolve())] if args.old else [])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "pngs").mkdir()
        write_pngs(tmp / "pngs", args.pngs)
        write_array_record(tmp / "cifar.array_record", args.records)
        for label, root in checkouts:
            files = {"folder": str(tmp / "pngs"), "array_record": str(tmp / "cifar.array_record"),
                     "index_workdir": str(tmp / label / "index"),
                     "step_workdir": str(tmp / label / "step")}
            for key in ("index_workdir", "step_workdir"):
                pathlib.Path(files[key]).mkdir(parents=True)
            run_task(root, index_cached(args, files, batches=0))  # an earlier run's index
            for name, task in tasks(args, files):
                row = run_task(root, task)
                if row is None:
                    continue
                figures = ", ".join(f"{k} {v:.3g}" for k, v in row.items())
                print(f"  {label:3s} {name:26s} workers {task['workers']}: {figures}",
                      flush=True)
                report["rows"].append({"checkout": label, "name": name,
                                       "workers": task["workers"], **row})
                if args.out:
                    bench.write_json(args.out, report, header)
    return report


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # `benchmarks` importable; PYTHONPATH's jaxar first
    main()

"""Scoring a trained (or imported) run on a dataset split: `jaxar.evaluate`, `jaxar-eval`.

The run's config and EMA parameters come from its workdir (`checkpoint.load_run`, what
the sampler reads); the data from the config's `data` section, with `overrides` of
`data.*` and `eval.*` keys (another dataset, source, size cap or batch size). The split
is read once, in order, in global batches of `eval.batch_size` (rounded up to fill every
device) split over all devices of all processes; the last batch is padded and its
padding masked out, so every example counts exactly once. The jitted step and the loop
are the trainer's own (`train.jit_eval_step`, `train.evaluate_split`): a run's
`eval/bpd` at a step equals this evaluation of that step's checkpoint on its test split.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxar import config, data, files, settings
from jaxar.data import pipeline
from jaxar.training import checkpoint, codes, sharding, train

SPLITS = ("train", "test")
OVERRIDABLE = ("data", "eval")  # sections an evaluation may change; the model is the run's


class Evaluation(NamedTuple):
    """What `evaluate` returns: the summary it writes as JSON, every example's scores
    (numpy `[N]` in split order: "index", "label" (-1 for unlabelled data), "nats",
    "bits_per_dim"), and the files it wrote."""

    summary: dict[str, Any]
    scores: dict[str, np.ndarray]
    written: tuple[pathlib.Path, ...] = ()


def summary_path(workdir, split: str, step: int) -> pathlib.Path:
    """Where the summary goes by default: `<workdir>/eval_<split>_<step>.json`."""
    return pathlib.Path(workdir) / f"eval_{split}_{step}.json"


def apply_overrides(cfg, overrides: Mapping[str, Any] | None) -> None:
    """Sets `overrides` ({"data.num_test": 100, ...}) on `cfg`: only keys of the data
    and eval sections (checked with the rest by `config.validate`)."""
    for key, value in (overrides or {}).items():
        section, _, name = str(key).partition(".")
        if section not in OVERRIDABLE or not name or "." in name:
            raise ValueError(f"overrides: only data.<key> and eval.<key> can change for an "
                             f"evaluation (the model is the run's), got {key!r}")
        if section not in cfg:
            cfg[section] = {}
        value = tuple(value) if isinstance(value, list) else value
        try:
            cfg[section][name] = value
        except TypeError as err:
            raise ValueError(f"{key}: {' '.join(str(err).split())}") from None


def evaluate(workdir, split: str = "test", *, step: int | None = None,
             overrides: Mapping[str, Any] | None = None, out=None, scores=None,
             progress: bool = False, params: str = "ema") -> Evaluation:
    """Bits/dim and nats per example of the run in `workdir` (checkpoint `step`, default
    the newest; its EMA parameters, or with `params="raw"` the optimizer's) on `split`
    ("train" or "test") of its dataset.

    Writes the summary as JSON to `out` (default `<workdir>/eval_<split>_<step>.json`)
    and, when `scores` names a .jsonl file, one line per example: index, label, nats,
    bits_per_dim. Both destinations are checked before any data is read; only process 0
    writes. `progress` shows a bar on stderr. Every bad argument, config value, dataset
    or destination is a one-line ValueError naming it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg, model, variables, step = checkpoint.load_run(workdir, step, params)
    apply_overrides(cfg, overrides)
    config.validate(cfg)
    if not model.autoregressive:
        raise ValueError(f"model {cfg.model.name!r} of {str(workdir)!r} is not a distribution "
                         f"over its input: it has no bits/dim to evaluate")
    out = files.check_output(summary_path(workdir, split, step) if out is None else out,
                             "--out", (".json",))
    if scores is not None:
        scores = files.check_output(scores, "--scores", (".jsonl",))
    # Every device, data parallel (the default mesh), whatever mesh the run trained on.
    mesh = sharding.make_mesh(settings.MeshSettings())
    batch_size = train.padded_eval_batch_size(cfg, mesh)
    codes.prepare(cfg)  # a prior's VQ-VAE codes: encoded where missing or stale
    examples = dict(zip(SPLITS, data.load_splits(cfg, workdir), strict=True))[split]
    pipeline.check_labels(cfg, examples)
    train._check_served_cond(model, examples)  # the trainer's own check
    result = _run(model, cfg, mesh, variables, examples, batch_size, progress)
    summary = {"workdir": str(pathlib.Path(workdir).absolute()), "step": step, "split": split,
               "dataset": examples.name, "params": params, **result.summary,
               "overrides": dict(overrides or {})}
    written = (out,) if scores is None else (out, scores)
    if jax.process_index() == 0:
        files.write_text(out, json.dumps(summary, indent=2) + "\n")
        if scores is not None:
            _write_scores(scores, result.scores)
    return Evaluation(summary, result.scores, written)


def _run(model, cfg, mesh, variables, examples, batch_size: int, progress: bool) -> Evaluation:
    """The shared evaluation loop over `examples`, compiled first, timed, and every row's
    scores kept."""
    replicated = NamedSharding(mesh, P())
    params = jax.tree.map(lambda v: sharding.global_array(v, replicated), variables["params"])
    batch_stats = jax.tree.map(lambda v: sharding.global_array(v, replicated),
                               variables.get("batch_stats", {}))
    step_fn = train.jit_eval_step(model, cfg, mesh, replicated, replicated, per_example=True)
    tic = time.perf_counter()
    compiled = step_fn.lower(params, batch_stats, _abstract_batch(examples, batch_size)).compile()
    compile_seconds = time.perf_counter() - tic

    bar = _progress_bar(len(examples), progress)
    rows = []

    def on_rows(batch_rows):
        rows.append(batch_rows)
        bar.update(int(batch_rows["mask"].sum()))

    batch_sharding = sharding.batch_sharding(mesh)
    tic = time.perf_counter()
    try:
        means, count = train.evaluate_split(
            lambda batch: compiled(params, batch_stats, batch), examples, batch_size,
            lambda batch: train.put_batch(batch, batch_sharding),
            sharding.data_shard(batch_sharding), on_rows)
    finally:
        bar.close()
    seconds = time.perf_counter() - tic
    means = jax.device_get(model.summarize(means))
    summary = {"examples": int(count), "bits_per_dim": float(means["bpd"]),
               "nats_per_example": float(means["nll_nats"]),
               "images_per_sec": count / seconds, "seconds": seconds,
               "compile_seconds": compile_seconds, "batch_size": batch_size,
               "devices": mesh.size, "processes": jax.process_count()}
    return Evaluation(summary, _scores(rows, examples))


def _abstract_batch(examples, batch_size: int) -> dict:
    """Shapes and dtypes of one global eval batch, for compiling before the loop."""
    first = next(data.eval_batches(examples, batch_size, 0, 1))
    return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype)
            for k, v in first.items()}


def _scores(rows: list[dict], examples) -> dict[str, np.ndarray]:
    """Every example's scores from the batches' rows (global batch order: row j of batch
    k is example k * batch_size + j; padding rows are dropped)."""
    joined = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    keep = joined["mask"] > 0
    labels = joined["labels"][keep].astype(np.int64)
    return {
        "index": np.flatnonzero(keep),
        "label": labels if examples.num_classes else np.full_like(labels, -1),
        "nats": joined["nll_nats"][keep],
        "bits_per_dim": joined["bpd"][keep],
    }


def _write_scores(path, scores: dict[str, np.ndarray]) -> None:
    with files.atomic_write(path, "w") as f:
        for index, label, nats, bpd in zip(*(scores[k].tolist() for k in
                                             ("index", "label", "nats", "bits_per_dim")),
                                           strict=True):
            record = {"index": index, "label": None if label < 0 else label, "nats": nats,
                      "bits_per_dim": bpd}
            f.write(json.dumps(record) + "\n")


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm  # noqa: PLC0415 (as the trainer's bar)

    return tqdm(total=total, desc="eval", unit="img", dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0)

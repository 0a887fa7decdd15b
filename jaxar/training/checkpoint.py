"""Orbax checkpoints of the train state, the data iterator position and the config.

The state is saved as the sharded global arrays it is (every process writes its
shards; the workdir must be shared between processes) and restored onto
whatever mesh the resuming run has: saved on 8 devices, resumed on 4.

Orbax writes every checkpoint into a temporary directory and renames it when
complete, so a killed run leaves either a whole checkpoint or none: resuming
loses at most the steps since the last save. Old checkpoints (beyond
`max_to_keep`) are pruned here rather than by orbax, which deletes in place:
a run killed mid-deletion would leave a half-deleted directory under a step's
name. Here it is first renamed to `.deleting-<step>` (atomic), then removed.

One restore policy (`restore_newest`) serves the trainer and the sampler
(`load_run`): the newest checkpoint that restores wins. A checkpoint that fails
to restore (a disk fault, a partial copy, a missing `_METADATA`) is
"unreadable": while an older one restores it is skipped with a warning naming
both steps; the trainer then moves it aside to `checkpoints/unreadable-<step>`
(so the resumed run saves that step again), the sampler touches nothing. Only a
checkpoint whose arrays have other shapes than the config's state is "another
config" (the workdir holds a run of another config): the run stops with a
ValueError and nothing is touched; so it does when no checkpoint restores at
all. With several processes there is no automatic fall-back (they must agree
on the step): a ValueError names the checkpoint to move aside.

A write that fails (a read-only directory, a full disk) raises from `save` or
`close` and never leaves orbax threads behind: directories are created
synchronously and `close` releases orbax even after a failed save.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxar import models

log = logging.getLogger(__name__)


class _OneLineOrbaxErrors(logging.Filter):
    """Orbax logs the traceback of a failed background save or restore (which jaxar then
    reports itself, in one line), and asyncio the tracebacks of the tasks of its abandoned
    reads that failed too ("Task exception was never retrieved", with the task's repr on
    a second line): their records keep their first line and the error's line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and (record.name == "asyncio" or "orbax" in record.pathname):
            error = record.exc_info[1]
            first_line = record.getMessage().split("\n", 1)[0]
            record.msg = f"{first_line} ({one_line(error, 200)})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _drop_abandoned_io_reports(info) -> None:
    """Drops what a failed save or restore leaves behind, which Python would print as bare
    tracebacks after the failure was handled: tensorstore's callbacks reaching the event
    loop orbax already closed ("Event loop is closed"), and orbax's coroutines of the
    abandoned operation (the other arrays' reads still in flight when one failed), which
    raise an error of their own when the garbage collector closes them unfinished.
    Anything else goes to the hook that was installed before."""
    error = info.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    code = getattr(info.object, "cr_code", None)
    abandoned = (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
                 and isinstance(error.__cause__ or error.__context__, GeneratorExit))
    if not (closed_loop or abandoned):
        _drop_abandoned_io_reports.previous(info)


_ONE_LINE_FILTER = _OneLineOrbaxErrors()


def quiet_orbax_errors() -> None:
    """Makes orbax's failures one line each: its logged tracebacks shortened (on the
    "absl" logger it logs through, and asyncio's of its tasks) and the tracebacks that a
    failed save or restore leaves behind dropped (`sys.unraisablehook`). Idempotent;
    every reader and writer of checkpoints calls it."""
    for logger in map(logging.getLogger, ("absl", "asyncio")):
        if _ONE_LINE_FILTER not in logger.filters:
            logger.addFilter(_ONE_LINE_FILTER)
    if sys.unraisablehook is not _drop_abandoned_io_reports:
        _drop_abandoned_io_reports.previous = sys.unraisablehook
        sys.unraisablehook = _drop_abandoned_io_reports


class Restored(NamedTuple):
    """What `restore_newest` found: the items of checkpoint `step`, and the newer
    checkpoints it skipped as unreadable, as (step, why) pairs."""

    state: Any
    data: Any
    config: Any
    step: int
    unreadable: tuple[tuple[int, str], ...]


def one_line(err: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception on one line, at most about `limit` characters."""
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[:limit] + " ..."
    return f"{type(err).__name__}: {text}"


def restore_newest(manager, directory, make_target, *, expected=None, step=None,
                   items=()) -> Restored | None:
    """The one restore policy of the trainer and the sampler: the newest readable checkpoint.

    Tries the saved steps newest first (only `step`, if given). A step whose state
    metadata is missing or unreadable, or whose restore fails, is unreadable and the
    next older one is tried; the steps skipped are named in a warning once one restores.
    `expected` (an abstract state) is what the state must hold: a step with readable
    metadata of other shapes, or one that fails to restore and has another tree
    structure, is another config's: a ValueError, and nothing older is tried.
    `make_target(metadata)` gives the abstract state to restore into; `items` names the
    JSON items restored besides the state ("data", "config"). Returns None if there is
    no checkpoint; a ValueError if none restores.
    """
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    unreadable = []
    for candidate in steps:
        try:
            metadata = manager.item_metadata(candidate)["state"]
            if metadata is None or not _signature(metadata):
                raise ValueError("the state's metadata (_METADATA) is missing")
        except Exception as err:  # noqa: BLE001 (any damage: try an older one)
            if not _exists(directory, candidate):
                continue  # pruned meanwhile: no damage
            unreadable.append((candidate, one_line(err)))
            _refuse_fallback_if_multiprocess(directory, candidate, err)
            continue
        if expected is not None and _signature(metadata) != _signature(expected):
            # Another config's state: refuse before orbax attempts (and aborts) a read.
            raise _another_config(candidate, directory, "other shapes")
        args = {"state": ocp.args.StandardRestore(make_target(metadata))}
        args.update({item: ocp.args.JsonRestore() for item in items})
        try:
            restored = manager.restore(candidate, args=ocp.args.Composite(**args))
        except Exception as err:  # noqa: BLE001 (any read failure: try an older one)
            if expected is not None and _paths(metadata) != _paths(expected):
                # Same shapes in another tree (e.g. an optimizer of other transforms).
                raise _another_config(candidate, directory, "another structure") from err
            if not _exists(directory, candidate):
                continue  # pruned meanwhile: no damage
            unreadable.append((candidate, one_line(err)))
            _refuse_fallback_if_multiprocess(directory, candidate, err)
            continue
        for bad, why in unreadable:
            log.warning("checkpoint at step %d is unreadable (%s); falling back to the "
                        "checkpoint at step %d", bad, why, candidate)
        return Restored(restored["state"], restored.get("data"), restored.get("config"),
                        candidate, tuple(unreadable))
    if unreadable:
        details = "; ".join(f"step {s}: {why}" for s, why in unreadable[:3])
        raise ValueError(
            f"no checkpoint in {directory} can be restored ({details}); move the damaged "
            f"step directories aside, or use a new --workdir"
        )
    return None


def _exists(directory, step: int) -> bool:
    return (pathlib.Path(directory) / str(step)).is_dir()


def _another_config(step: int, directory, how: str) -> ValueError:
    return ValueError(
        f"the checkpoint at step {step} in {directory} holds a train state of {how} than "
        f"this config's: was this --workdir trained with another config? Use a new --workdir"
    )


def _refuse_fallback_if_multiprocess(directory, step: int, err: BaseException) -> None:
    if jax.process_count() > 1:  # processes must not choose different steps
        raise ValueError(
            f"checkpoint at step {step} in {directory} cannot be restored ({one_line(err)}); "
            f"with several processes there is no automatic fall-back: move that directory "
            f"aside and restart"
        ) from err


def finished_steps(directory: str | pathlib.Path) -> list[int]:
    """Steps of the finished checkpoints in `directory` (orbax names one by its step only
    once it is complete), oldest first; reads the directory, not a manager."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


class Checkpointer:
    """Saves and restores `(state, data_state)` under `workdir/checkpoints/<step>/`."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"train.max_checkpoints must be >= 1, got {max_to_keep}")
        quiet_orbax_errors()
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.max_to_keep = max_to_keep
        self.saved_any = False  # close() prunes only a run that saved (never a refused one)
        self.is_main = jax.process_index() == 0
        if self.is_main:
            if self.directory.exists() and not os.access(self.directory, os.W_OK | os.X_OK):
                raise ValueError(f"checkpoint directory {self.directory} is not writable")
            for leftover in self.directory.glob(".deleting-*"):  # a killed prune
                shutil.rmtree(leftover, ignore_errors=True)
        # Directories created in save() itself: a read-only or full disk fails there, at
        # once, rather than in orbax threads that wait minutes for the directory.
        # cleanup_tmp_directories: the temporary directory of a save killed midway is
        # removed when the next run starts (this run holds the workdir's lock).
        options = ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=_item_handlers()
        )
        self._closed = False

    def save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict):
        """Starts an asynchronous save of step `step` (no-op if it already exists).

        Waits for the previous save first (raising its error, if it failed), then prunes
        the oldest checkpoints.
        """
        self.manager.wait_until_finished()
        self._prune()
        self.saved_any = True
        if step in self.manager.all_steps():
            return
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            ),
        )
        if not saved:
            log.warning("orbax declined to save step %d (a newer step exists)", step)

    def restore_latest(self, abstract_state) -> Restored | None:
        """`restore_newest` of this workdir into `abstract_state`, or None if no checkpoint.

        `abstract_state` (from `jax.eval_shape`, with shardings) fixes the
        structure, dtypes and placement of the restored arrays. The unreadable newer
        checkpoints it skipped stay until `move_aside_unreadable`.
        """
        return restore_newest(
            self.manager, self.directory, lambda _: abstract_state,
            expected=abstract_state, items=("data", "config"),
        )

    def move_aside_unreadable(self, restored: Restored) -> None:
        """Moves the checkpoints `restored` skipped to `unreadable-<step>` (kept for
        inspection), so the resumed run saves those steps again."""
        if self.is_main:
            for step, _ in restored.unreadable:
                self._move_aside(step, "unreadable")

    def move_aside_all(self, why: str) -> list[int]:
        """Moves every finished checkpoint aside to `<why>-<step>` (a run started over);
        returns their steps."""
        steps = finished_steps(self.directory)
        if self.is_main:
            for step in steps:
                self._move_aside(step, why)
        if jax.process_count() > 1:  # every process's manager forgets them
            from jax.experimental import multihost_utils  # noqa: PLC0415

            multihost_utils.sync_global_devices("jaxar: checkpoints moved aside")
            self.manager.reload()
        return steps

    def discard_from(self, first_bad: int) -> list[int]:
        """After a divergence: moves the checkpoints of step >= `first_bad` aside to
        `diverged-<step>` (waiting for a save in flight first); returns their steps."""
        self.wait_quietly()
        bad = [s for s in finished_steps(self.directory) if s >= first_bad]
        if self.is_main:
            for step in bad:
                self._move_aside(step, "diverged")
        return bad

    def _prune(self) -> None:
        """Removes all but the newest `max_to_keep` checkpoints: rename, then delete."""
        steps = sorted(self.manager.all_steps())
        if not self.is_main or len(steps) <= self.max_to_keep:
            return
        for step in steps[: -self.max_to_keep]:
            doomed = self.directory / f".deleting-{step}-{time.time_ns()}"
            (self.directory / str(step)).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)  # a leftover is removed at next start
        self.manager.reload()

    def _move_aside(self, step: int, why: str) -> None:
        """Renames checkpoint `step` to `<why>-<step>`, out of the manager's sight."""
        target = self.directory / f"{why}-{step}"
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.directory / f"{why}-{step}.{suffix}"
        (self.directory / str(step)).rename(target)
        if not self._closed:
            self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def wait_quietly(self) -> None:
        """Waits for a save in flight; its failure is logged, not raised (a run that
        already stops for another reason)."""
        if self._closed:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            log.warning("the last checkpoint save failed too: %s", one_line(err))

    def close(self, prune: bool = True) -> None:
        """Waits for the last save, prunes, and releases orbax's threads.

        Everything is released even if the last save failed; that failure is raised
        afterwards. A second call does nothing.
        """
        if self._closed:
            return
        error = None
        try:
            self.manager.wait_until_finished()
            if prune and self.saved_any:
                self._prune()
        except Exception as err:  # noqa: BLE001 (raised below, once orbax is released)
            error = err
        try:
            self.manager.close()
        except Exception as err:  # noqa: BLE001
            error = error or err
        self._closed = True
        if error is not None:
            raise error


def _item_handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler()}


def _signature(state_tree) -> list:
    """The sorted (shape, dtype) of every array in a state (or its checkpoint metadata)."""
    return sorted((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(state_tree))


def _paths(state_tree) -> list:
    """The sorted key paths of the arrays of a state (or its checkpoint metadata), as
    strings: a TrainState's attributes and the metadata's dict keys read alike."""
    def name(key):
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    flat = jax.tree_util.tree_flatten_with_path(state_tree)[0]
    return sorted("/".join(map(name, path)) for path, _ in flat)


READ_ATTEMPTS = 5  # listings a reader tries while a trainer saves and prunes
# A reader whose every listed step was pruned under it retries for this long: only a
# trainer saving faster than a step can be read (a loaded machine, a tiny model)
# keeps it retrying beyond READ_ATTEMPTS.
READ_RETRY_SECONDS = 60.0


class _Vanished(ValueError):
    """Every step a reader listed was pruned before it could be read."""

    def __init__(self, steps):
        super().__init__(f"steps {steps} vanished while being read")
        self.steps = steps


def read_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run saved in `workdir/config.json`; a one-line ValueError naming the
    file when it is missing, unreadable or not a config."""
    config_file = pathlib.Path(workdir) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"workdir {str(workdir)!r} holds no config.json: not a jaxar run")
    try:
        saved = json.loads(config_file.read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("data"), dict):
            raise ValueError("not a config (an object with a data section)")
        cfg = ml_collections.ConfigDict(saved)
        cfg.data.shape = tuple(cfg.data.shape)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"{config_file} is damaged: {one_line(err, 200)}") from None
    return cfg


def load_run(workdir: str | pathlib.Path, step: int | None = None, params: str = "ema"):
    """`(cfg, model, variables, step)` of a training run, for sampling or evaluation.

    Reads the config saved in the workdir and the EMA parameters (`params="raw"`: the
    optimizer's) plus BatchNorm statistics, if any, of checkpoint `step`; without `step`,
    of the newest checkpoint that restores (`restore_newest`: an unreadable newer one is
    skipped with a warning, and nothing in the workdir is changed). A ValueError for
    anything unusable.
    """

    if params not in ("ema", "raw"):
        raise ValueError(f"params must be 'ema' or 'raw', got {params!r}")
    quiet_orbax_errors()
    workdir = pathlib.Path(workdir)
    cfg = read_run_config(workdir)
    directory = workdir.absolute() / "checkpoints"
    # Whatever devices or processes wrote the checkpoint, read it onto one local device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = lambda metadata: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    # A trainer may prune the step being read (or finish a newer one) meanwhile: a step
    # that vanished is no damage, the listing is read again.
    start, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        listed = finished_steps(directory)
        try:
            with ocp.CheckpointManager(directory, item_handlers=_item_handlers()) as manager:
                steps = manager.all_steps()
                if not steps:
                    raise ValueError(f"workdir {str(workdir)!r} holds no checkpoint")
                if step is not None and step not in steps:
                    raise ValueError(
                        f"step must be one of the saved steps {sorted(steps)}, got {step}")
                restored = restore_newest(manager, directory, target, step=step)
            if restored is None:  # every listed step vanished
                raise _Vanished(sorted(steps))
            break
        except (OSError, ValueError) as err:
            elapsed, vanished = time.monotonic() - start, isinstance(err, _Vanished)
            more = elapsed < READ_RETRY_SECONDS if vanished else attempts < READ_ATTEMPTS
            if not more or finished_steps(directory) == listed:
                if vanished:
                    raise ValueError(
                        f"workdir {str(workdir)!r}: every checkpoint listed was pruned while "
                        f"it was read ({attempts} listings in {elapsed:.0f} s; the last "
                        f"{err.steps}): a trainer is saving faster than a step can be read"
                    ) from None
                raise
            time.sleep(min(0.05 * attempts, 1.0))
    state, step = restored.state, restored.step
    variables = {"params": state["ema_params" if params == "ema" else "params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return cfg, models.build_model(cfg), variables, step

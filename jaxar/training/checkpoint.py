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

A checkpoint that still fails to restore (a disk fault, a partial copy) while
an older one restores is skipped with a warning naming both steps and moved
aside to `checkpoints/unreadable-<step>`, so the resumed run saves that step
again. A checkpoint whose arrays have other shapes than the config's state (the
workdir holds a run of another config), or none that restores at all, stops the
run with a ValueError and nothing is touched. With several processes
there is no automatic fall-back (they must agree on the step): a ValueError
names the checkpoint to move aside.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxar import models

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores `(state, data_state)` under `workdir/checkpoints/<step>/`."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"train.max_checkpoints must be >= 1, got {max_to_keep}")
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.max_to_keep = max_to_keep
        self.saved_any = False  # close() prunes only a run that saved (never a refused one)
        self.is_main = jax.process_index() == 0
        if self.is_main:
            for leftover in self.directory.glob(".deleting-*"):  # a killed prune
                shutil.rmtree(leftover, ignore_errors=True)
        options = ocp.CheckpointManagerOptions(create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=_item_handlers()
        )

    def save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict):
        """Starts an asynchronous save of step `step` (no-op if it already exists).

        Waits for the previous save first, then prunes the oldest checkpoints.
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

    def restore_latest(self, abstract_state):
        """`(state, data_state, step)` of the newest readable checkpoint, or None if none.

        `abstract_state` (from `jax.eval_shape`, with shardings) fixes the
        structure, dtypes and placement of the restored arrays.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed = []
        for step in steps:
            saved = self._signature(step)
            if saved is not None and saved != _signature(abstract_state):
                # Another config's state: refuse before orbax attempts (and aborts) a read.
                raise ValueError(
                    f"the checkpoint at step {step} in {self.directory} holds a train state of "
                    f"other shapes than this config's: was this --workdir trained with another "
                    f"config? Use a new --workdir"
                )
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as err:  # noqa: BLE001 (any read failure: try an older one)
                if jax.process_count() > 1:  # processes must not choose different steps
                    raise ValueError(
                        f"checkpoint at step {step} in {self.directory} cannot be restored "
                        f"({type(err).__name__}: {err}); with several processes there is no "
                        f"automatic fall-back: move that directory aside and restart"
                    ) from err
                failed.append((step, err))
                continue
            for bad, err in failed:  # an older one restores: the newer ones are damaged
                log.warning(
                    "checkpoint at step %d is unreadable (%s: %s); falling back to the "
                    "checkpoint at step %d", bad, type(err).__name__, err, step,
                )
                self._move_aside(bad)
            return restored["state"], restored["data"], step
        if failed:  # none restores: most likely another config's run, so touch nothing
            step, err = failed[0]
            raise ValueError(
                f"no checkpoint in {self.directory} restores into this config's train state "
                f"(step {step}: {type(err).__name__}: {' '.join(str(err).split())[:300]}); "
                f"was this --workdir trained with another config? Use a new --workdir"
            )
        return None

    def _signature(self, step: int):
        """`_signature` of the state saved at `step`, or None if its metadata is unreadable."""
        try:
            return _signature(self.manager.item_metadata(step)["state"])
        except Exception:  # noqa: BLE001 (a damaged checkpoint: let the restore decide)
            return None

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

    def _move_aside(self, step: int) -> None:
        """Renames an unreadable checkpoint out of the manager's sight (kept for inspection)."""
        target = self.directory / f"unreadable-{step}"
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.directory / f"unreadable-{step}.{suffix}"
        (self.directory / str(step)).rename(target)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        if self.saved_any:
            self._prune()
        self.manager.close()


def _item_handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler()}


def _signature(state_tree) -> list:
    """The sorted (shape, dtype) of every array in a state (or its checkpoint metadata)."""
    return sorted((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(state_tree))


def load_run(workdir: str | pathlib.Path, step: int | None = None):
    """`(cfg, model, variables, step)` of a training run, for sampling or evaluation.

    Reads the config saved in the workdir and the EMA parameters (plus BatchNorm
    statistics, if any) of checkpoint `step` (the latest when None).
    """

    workdir = pathlib.Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"workdir {str(workdir)!r} holds no config.json: not a jaxar run")
    cfg = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    cfg.data.shape = tuple(cfg.data.shape)
    manager = ocp.CheckpointManager(
        workdir.absolute() / "checkpoints", item_handlers=_item_handlers()
    )
    steps = manager.all_steps()
    if not steps:
        raise ValueError(f"workdir {str(workdir)!r} holds no checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ValueError(f"step must be one of the saved steps {sorted(steps)}, got {step}")
    # Whatever devices or processes wrote the checkpoint, read it onto one local device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)["state"],
    )
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    state = state["state"]
    manager.close()
    variables = {"params": state["ema_params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return cfg, models.build_model(cfg), variables, step

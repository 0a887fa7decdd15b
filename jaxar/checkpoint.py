"""Orbax checkpoints of the train state, the data iterator position and the config.

Orbax writes every checkpoint into a temporary directory and renames it when
complete, so a killed run leaves either a whole checkpoint or none: resuming
loses at most the steps since the last save. A checkpoint that still fails to
restore (e.g. a disk fault) is skipped with a warning for the previous one.
"""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores `(state, data_state)` under `workdir/checkpoints/<step>/`."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict):
        """Starts an asynchronous save of step `step` (no-op if it already exists)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            ),
        )

    def restore_latest(self, abstract_state):
        """`(state, data_state, step)` of the newest readable checkpoint, or None if none.

        `abstract_state` (from `jax.eval_shape`, with shardings) fixes the
        structure, dtypes and placement of the restored arrays.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as err:  # noqa: BLE001 (any read failure means: try an older one)
                older = steps[i + 1] if i + 1 < len(steps) else None
                log.warning(
                    "checkpoint at step %d is unreadable (%s: %s); falling back to step %s",
                    step, type(err).__name__, err, older,
                )
                continue
            return restored["state"], restored["data"], step
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state):
    """ShapeDtypeStructs (with shardings) describing `state`, for restoring into it."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

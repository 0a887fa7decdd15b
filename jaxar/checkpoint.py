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


def load_run(workdir: str | pathlib.Path, step: int | None = None):
    """`(cfg, model, variables, step)` of a training run, for sampling or evaluation.

    Reads the config saved in the workdir and the EMA parameters (plus BatchNorm
    statistics, if any) of checkpoint `step` (the latest when None).
    """
    from jaxar import models  # noqa: PLC0415 (models import this module's users)

    workdir = pathlib.Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"workdir {str(workdir)!r} holds no config.json: not a jaxar run")
    cfg = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    cfg.data.shape = tuple(cfg.data.shape)
    manager = ocp.CheckpointManager(workdir.absolute() / "checkpoints")
    steps = manager.all_steps()
    if not steps:
        raise ValueError(f"workdir {str(workdir)!r} holds no checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ValueError(f"step must be one of the saved steps {sorted(steps)}, got {step}")
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = state["state"]
    manager.close()
    variables = {"params": state["ema_params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return cfg, models.build_model(cfg), variables, step

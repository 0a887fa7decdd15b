"""Crash safety: SIGKILL the trainer at random moments; resuming ends where an
uninterrupted run ends, bit for bit, and every checkpoint on disk stays readable."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxar
from jaxar.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "made_mnist.py:smoke")
OVERRIDES = {"num_steps": 40, "checkpoint_every_steps": 2, "log_every_steps": 5,
             "eval_every_steps": 20, "sample_every_steps": 40}


def full_state(workdir, step):
    with ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints") as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]


def checkpoint_steps(workdir):
    """Steps of the finished checkpoints in `workdir` (orbax renames a finished one to its step)."""
    directory = pathlib.Path(workdir) / "checkpoints"
    return [int(p.name) for p in directory.glob("*") if p.name.isdigit()]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    cfg = jaxar.load_config(CONFIG)
    cfg.train.update(OVERRIDES)
    train.train_and_evaluate(cfg, tmp_path / "reference")

    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jaxar.cli.train", "--config", CONFIG, "--workdir", str(workdir)]
    cmd += [f"--config.train.{k}={v}" for k, v in OVERRIDES.items()]
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        # Kill a random moment after the run's next checkpoint appears: mid-training, while
        # later checkpoints are being written (4 kills, then it may finish).
        if kills == 4:
            proc.wait()
        seen = set(checkpoint_steps(workdir))
        while proc.poll() is None and set(checkpoint_steps(workdir)) <= seen:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        elif proc.returncode == 0:
            break
        else:
            pytest.fail(f"trainer failed with exit code {proc.returncode} on attempt {attempt}")
        # Every checkpoint left behind must restore.
        steps = ocp.CheckpointManager(workdir.absolute() / "checkpoints").all_steps()
        for step in steps:
            full_state(workdir, step)
    else:
        pytest.fail("training did not finish in 12 attempts")
    assert kills == 4, "the test must actually interrupt training"

    # Older checkpoints were pruned whole (max_checkpoints = 3), even when killed mid-prune.
    assert sorted(checkpoint_steps(workdir)) == [36, 38, 40]
    assert not list((workdir / "checkpoints").glob(".deleting-*"))
    reference, ref_data = full_state(tmp_path / "reference", 40)
    resumed, data = full_state(workdir, 40)
    assert data == ref_data
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)

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

from jaxar.training import reporting

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "made_mnist.py:smoke")  # the cheapest smoke model
OVERRIDES = {"num_steps": 100, "checkpoint_every_steps": 2, "log_every_steps": 5,
             "eval_every_steps": 20, "sample_every_steps": 100}
KILLS = 6
BLIND_EVERY = 3  # every 3rd kill lands at a random moment after the start, whatever it does


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
    """6 SIGKILLs: 4 at a random moment within 1.5 checkpoint intervals after a new
    checkpoint appears (mid-training, mid-save, mid-prune), 2 at a random moment between
    the start and the first new checkpoint (imports, the lock, the restore, the metrics
    rewrite, the first steps); both scale with this machine's speed, measured on the
    uninterrupted run, so each kill costs a restart and a few steps anywhere. Every
    restart resumes; every checkpoint left restores; the end is bitwise the
    uninterrupted run's, with every step logged once. Restarts load their executables
    from a persistent compilation cache (the uninterrupted run fills it), so a restart
    costs about its imports."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def command(workdir):
        return [sys.executable, "-m", "jaxar.cli.train", "--config", CONFIG, "--workdir",
                str(workdir), *[f"--config.train.{k}={v}" for k, v in OVERRIDES.items()]]

    reference = tmp_path / "reference"
    subprocess.run(command(reference), env=env, check=True, capture_output=True, timeout=300)
    seconds_per_step = np.median([8 / r["train/images_per_sec"]  # smoke batch: 8
                                  for r in reporting.read_metrics(reference)
                                  if "train/images_per_sec" in r])
    interval = OVERRIDES["checkpoint_every_steps"] * seconds_per_step
    to_first_checkpoint = 5.0  # measured again by every attempt that waits for one

    workdir = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(KILLS + 5):
        log = tmp_path / f"attempt_{attempt}.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(command(workdir), env=env, stdout=subprocess.DEVNULL,
                                    stderr=stderr, start_new_session=True)
        if kills == KILLS:
            proc.wait(timeout=300)
        elif (kills + 1) % BLIND_EVERY == 0:
            time.sleep(rng.uniform(0.0, to_first_checkpoint))
        else:
            seen, start = set(checkpoint_steps(workdir)), time.monotonic()
            while proc.poll() is None and set(checkpoint_steps(workdir)) <= seen:
                time.sleep(0.01)
            to_first_checkpoint = time.monotonic() - start
            time.sleep(rng.uniform(0.0, 1.5 * interval))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        elif proc.returncode == 0:
            break
        else:
            pytest.fail(f"trainer failed with exit code {proc.returncode} on attempt {attempt}: "
                        f"{log.read_text()[-2000:]}")
        # Every checkpoint left behind must restore.
        for step in checkpoint_steps(workdir):
            full_state(workdir, step)
    else:
        pytest.fail(f"training did not finish in {KILLS + 5} attempts")
    assert kills == KILLS, "the test must actually interrupt training"

    # Older checkpoints were pruned whole (max_checkpoints = 3), even when killed mid-prune.
    assert sorted(checkpoint_steps(workdir)) == [96, 98, 100]
    assert not list((workdir / "checkpoints").glob(".deleting-*"))
    ref_state, ref_data = full_state(reference, 100)
    resumed, data = full_state(workdir, 100)
    assert data == ref_data
    for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    # Each step is logged once (rows after a resumed checkpoint were dropped), and the
    # evaluations, which do not depend on where the runs were cut, are the reference's.
    ref_rows, rows = reporting.read_metrics(reference), reporting.read_metrics(workdir)
    assert [(r["step"], sorted(r)) for r in rows] == [(r["step"], sorted(r)) for r in ref_rows]
    assert [r for r in rows if "eval/bpd" in r] == [r for r in ref_rows if "eval/bpd" in r]

"""Reliability in-process: the divergence guard, the one restore policy of trainer and
sampler, metrics after a resume, a changed batch size, the workdir lock, API inputs.
(Subprocess faults are in tests/test_faults.py, SIGKILLs in tests/test_soak.py.)"""

import json
import pathlib
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from smoke_runs import copy_run, smoke

import jaxar
from jaxar.models import common
from jaxar.training import checkpoint, lock, reporting, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def names(workdir) -> list[str]:
    return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


def logged(workdir) -> list[tuple]:
    """(step, keys) of every metrics row, and the evaluation rows whole."""
    rows = reporting.read_metrics(workdir)
    return [(r["step"], sorted(r)) for r in rows], [r for r in rows if "eval/bpd" in r]


# ----------------------------------------------------------------- the divergence guard


def test_finite_divergence_stops_keeps_the_last_good_checkpoint_and_resumes(pristine,
                                                                            tmp_path):
    """bits/dim in the billions stays finite: train.max_bpd catches it. One checkpoint
    kept, one per step: the last good one survives both the pruning and the guard."""
    workdir = copy_run(pristine, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "6")  # resume from step 3
    diverging = smoke(learning_rate=100.0, checkpoint_every_steps=1, max_checkpoints=1)
    with pytest.raises(train.Diverged) as info:
        train.train_and_evaluate(diverging, workdir)
    message = str(info.value)
    assert "above train.max_bpd=8" in message and f"at step {info.value.step}" in message
    assert "the last good checkpoint is step" in message
    # The loss of step s scores the parameters of step s - 1: that checkpoint and any
    # later one were moved aside; the newest one left passed the guard.
    steps = checkpoint.finished_steps(workdir / "checkpoints")
    assert steps == [info.value.step - 2] and f"step {steps[-1]} in" in message
    assert f"diverged-{info.value.step - 1}" in names(workdir)
    good = checkpoint.load_run(workdir)[2]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(good))

    resumed = train.train_and_evaluate(smoke(), workdir)  # a re-run with a sane config
    assert int(resumed.step) == 6
    steps = [r["step"] for r in reporting.read_metrics(workdir) if "train/bpd" in r]
    assert steps == sorted(set(steps))  # the diverged run's rows were dropped


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_non_finite_parameters_are_never_saved(tmp_path):
    """A learning rate of 1e39 overflows float32: the parameters after step 1 are inf.
    The step's loss was computed before the update and is finite."""
    with pytest.raises(train.Diverged, match="parameters are not finite after step 1"):
        train.train_and_evaluate(smoke(learning_rate=1e39, checkpoint_every_steps=1),
                                 tmp_path)
    assert checkpoint.finished_steps(tmp_path / "checkpoints") == []


def test_max_bpd_default_and_checks():
    model = jaxar.build_model(smoke())
    assert train.max_bpd(smoke(), model) == 8.0  # 8 x log2(2 levels)
    assert train.max_bpd(smoke(max_bpd=float("inf")), model) == float("inf")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="train.max_bpd must be a number > 0"):
            train.max_bpd(smoke(max_bpd=bad), model)


# --------------------------------------------------- one restore policy, two callers


def damage(workdir, step: int, how: str) -> None:
    state = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
    if how == "no_metadata":
        (state / "_METADATA").unlink()
    else:  # a disk fault or a partial copy
        for f in state.rglob("*"):
            if f.is_file():
                f.write_bytes(b"not a checkpoint")


@pytest.mark.parametrize("how", ["no_metadata", "garbage"])
def test_sampler_falls_back_from_a_damaged_latest_checkpoint(pristine, tmp_path, caplog, how):
    workdir = copy_run(pristine, tmp_path)
    damage(workdir, 6, how)
    with caplog.at_level("WARNING", logger="jaxar.training.checkpoint"):
        cfg, model, variables, step = checkpoint.load_run(workdir)
    assert step == 3
    assert "checkpoint at step 6 is unreadable" in caplog.text
    assert "falling back to the checkpoint at step 3" in caplog.text
    assert names(workdir) == ["3", "6"]  # the sampler changes nothing
    assert jaxar.sample(model, variables, jax.random.key(0), 2).shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="no checkpoint .* can be restored .*step 6"):
        checkpoint.load_run(workdir, step=6)  # a step asked for: no fall-back


def test_sampler_cli_warns_and_falls_back_or_exits_2_in_one_line(pristine, tmp_path):
    """Before: raw tensorstore errors and tracebacks, no fall-back."""
    workdir = copy_run(pristine, tmp_path)
    damage(workdir, 6, "no_metadata")
    cmd = [sys.executable, "-m", "jaxar.cli.sample", "--workdir", str(workdir), "--num", "2",
           "--out", str(tmp_path / "x.png")]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "wrote 2 samples of step 3" in ok.stdout
    assert "checkpoint at step 6 is unreadable" in ok.stderr
    assert "falling back to the checkpoint at step 3" in ok.stderr
    damage(workdir, 3, "garbage")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("jaxar-sample: error: no checkpoint in ")


def test_trainer_falls_back_from_a_latest_checkpoint_without_metadata(pristine, tmp_path,
                                                                      caplog):
    """A missing _METADATA is damage, not "another config"; the run ends as if whole."""
    workdir = copy_run(pristine, tmp_path)
    damage(workdir, 6, "no_metadata")
    with caplog.at_level("WARNING", logger="jaxar.training.checkpoint"):
        state = train.train_and_evaluate(smoke(), workdir)
    assert "checkpoint at step 6 is unreadable" in caplog.text
    assert "another config" not in caplog.text
    assert names(workdir) == ["3", "6", "unreadable-6"]  # step 6 saved again, whole
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(pristine[1]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_other_shapes_or_structure_are_another_config(pristine, tmp_path):
    workdir = copy_run(pristine, tmp_path)
    with pytest.raises(train.BadInput, match="of another structure .* another config"):
        train.train_and_evaluate(smoke(grad_clip=0.0), workdir)  # one transform fewer
    damage(workdir, 6, "garbage")
    damage(workdir, 3, "no_metadata")
    with pytest.raises(train.BadInput, match="no checkpoint .* can be restored") as info:
        train.train_and_evaluate(smoke(), workdir)
    assert "another config" not in str(info.value)
    assert names(workdir) == ["3", "6"]  # refused: nothing moved


# --------------------------------------------------------------- metrics after a resume


def tensorboard_events(workdir) -> list:
    """(file, step, session_log status) of every event in the run's TensorBoard files."""
    from tensorboardX.proto import event_pb2  # noqa: PLC0415

    events = []
    for path in sorted((pathlib.Path(workdir) / "tensorboard").glob("events.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            events.append((path.name, event.step, event.session_log.status))
    return events


def test_steps_logged_after_the_last_checkpoint_are_logged_once(pristine, tmp_path):
    """A run killed after logging steps 4-6 but before checkpoint 6: the resumed run
    drops those rows and has TensorBoard purge them, then logs them again."""
    workdir = copy_run(pristine, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "6")
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/bpd": 0.9')  # a line cut short by the kill
    train.train_and_evaluate(smoke(), workdir)
    # Training rows average the steps since the last row, so the resumed run's row of
    # step 4 (one step since the checkpoint) has its own values; the steps are the same.
    assert logged(workdir) == logged(pristine[0])
    events = tensorboard_events(workdir)
    newest = max(name for name, _, _ in events)
    start = 1  # tensorboardX's SessionLog.START
    assert (newest, 4, start) in events  # purge_step: earlier files' steps >= 4 hidden


# ---------------------------------------------------------- a changed batch size, a lock


def test_changed_batch_size_on_resume_is_refused_before_anything_is_written(pristine,
                                                                           tmp_path):
    workdir = copy_run(pristine, tmp_path)
    before = {p: p.read_bytes() for p in (workdir / "config.json", workdir / "metrics.jsonl")}
    with pytest.raises(train.BadInput, match="train.batch_size=16 differs from the batch "
                                             "size 8 of the checkpoint at step 6"):
        train.train_and_evaluate(smoke(batch_size=16, num_steps=9), workdir)
    assert {p: p.read_bytes() for p in before} == before
    assert names(workdir) == ["3", "6"]


def test_a_held_workdir_lock_refuses_a_second_trainer(tmp_path):
    held = lock.WorkdirLock(tmp_path).acquire()
    try:
        with pytest.raises(train.BadInput, match="is in use: process .* holds"):
            train.train_and_evaluate(smoke(num_steps=1), tmp_path)
    finally:
        held.release()
    assert not (tmp_path / "config.json").exists()
    assert json.loads((tmp_path / ".lock").read_text().split()[0]) > 0  # names its pid


# ------------------------------------------------------------------------ API inputs


def test_api_inputs_raise_value_errors_naming_the_argument():
    """Checked before anything is traced: no variables are needed to see the errors."""
    cfg = jaxar.load_config(str(ROOT / "experiments" / "gated_pixelcnn_mnist.py:smoke"))
    cfg.model.cond_shape = (4, 4, 1)  # a spatial conditioning map
    model, variables = jaxar.build_model(cfg), {}
    key = jax.random.key(0)
    x = np.zeros((2, 8, 8, 1), np.int32)
    cond = np.zeros((2, 4, 4, 1), np.float32)
    bad_cond = cond.copy()
    bad_cond[0, 1, 2, 0] = np.nan
    cases = [
        (lambda: jaxar.bits_per_dim(model, variables, x[:0], cond=cond[:0]),
         "x must hold at least one example"),
        (lambda: jaxar.sample(model, variables, key, 2, cond=cond, known=x,
                              known_mask=np.ones(x.shape, bool).tolist()),
         "known_mask must be a numpy or jax array, got list"),
        (lambda: jaxar.sample(model, variables, key, 2, cond=cond,
                              temperature=np.array([0.5, 1.0])),
         r"temperature must be a scalar .* shape \(2,\)"),
        (lambda: jaxar.sample(model, variables, key, 2, cond=cond, temperature=np.ones(1)),
         r"temperature must be a scalar .* shape \(1,\)"),
        (lambda: jaxar.sample(model, variables, key, 2, cond=cond, temperature=float("inf")),
         "temperature must be > 0 and finite"),
        (lambda: jaxar.log_prob(model, variables, x, cond=bad_cond),
         r"cond must be finite, got 1 NaN or infinite"),
        (lambda: jaxar.sample(model, variables, key, 2, cond=np.full_like(cond, np.inf)),
         r"cond must be finite, got 32 NaN or infinite"),
        (lambda: jaxar.sample(model, variables, key, True, cond=cond[:1]),
         "num_samples must be a positive int, got True"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    for scalar in (0.9, 1, np.float32(0.9), np.array(0.9), jax.numpy.float32(2.0)):
        common.check_temperature(scalar)  # numbers and 0-d arrays are scalars

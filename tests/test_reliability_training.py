"""Reliability of training runs, in-process: resuming on other data is refused (or started
over on request), a refused run leaves nothing behind, readers never fail while a trainer
prunes, malformed run files and full disks are one-line errors that keep the previous
file, orbax's tracebacks are quieted for every loader. (Signals and the compilation cache:
tests/test_preemption.py.)"""

import asyncio
import contextlib
import gc
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from orbax.checkpoint._src.serialization import serialization
from PIL import Image
from smoke_runs import copy_run, smoke

import jaxar
from jaxar.training import checkpoint, lock, reporting, train


def snapshot(workdir) -> dict:
    """Every file of a workdir (path -> bytes)."""
    return {p.relative_to(workdir): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file()}


@contextlib.contextmanager
def small_tmpfs(directory: pathlib.Path, size: str = "256k"):
    """A tmpfs of `size` mounted on `directory` (root with mount rights), else a skip."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.environ.get("JAXAR_TEST_NO_MOUNT") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def fill(directory: pathlib.Path) -> None:
    """Writes a file into `directory` until its file system is full."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


# ------------------------------------------------------------------ resume on other data


def image_folder(directory: pathlib.Path, count: int = 24) -> pathlib.Path:
    """`count` 8x8 grey PNGs: a folder of the smoke run's shape."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
            directory / f"{i}.png")
    return directory


@pytest.mark.parametrize("overrides,named", [
    ({"name": "random"}, "data.name='random' (saved: 'stripes')"),
    ({"num_train": 32}, "data.num_train=32 (saved: 64)"),
    ({"source": "folder", "num_train": None, "num_test": None},
     "data.source='folder' (saved: 'synthetic')"),
])
def test_resume_on_other_data_is_refused_and_nothing_is_written(pristine, tmp_path, overrides,
                                                                named):
    workdir = copy_run(pristine, tmp_path)
    if overrides.get("source") == "folder":  # an image folder of the same shape
        overrides = {**overrides, "path": str(image_folder(tmp_path / "images"))}
    before = snapshot(workdir)
    with pytest.raises(train.BadInput) as info:
        train.train_and_evaluate(smoke(overrides), workdir)
    message = str(info.value)
    assert "\n" not in message and named in message, message
    assert "the data differs from that of the checkpoint at step 6" in message
    assert "--start_over" in message
    assert snapshot(workdir) == before  # config.json, checkpoints, metrics untouched


def test_start_over_trains_from_step_0_and_keeps_the_old_checkpoints_aside(pristine,
                                                                           tmp_path):
    workdir = copy_run(pristine, tmp_path)
    old_params = checkpoint.load_run(workdir)[2]
    state = train.train_and_evaluate(smoke({"name": "random"}), workdir, start_over=True)
    assert int(state.step) == 6
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "3", "6", "previous-3", "previous-6"]
    assert json.loads((workdir / "config.json").read_text())["data"]["name"] == "random"
    assert [r["step"] for r in reporting.read_metrics(workdir)] == [2, 3, 4, 6, 6]
    new_params = checkpoint.load_run(workdir)[2]
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(old_params), jax.tree.leaves(new_params), strict=True))


# ------------------------------------------------------------- refused runs leave nothing


def test_a_refused_run_leaves_no_workdir_lock_or_index(tmp_path):
    """Refused after the lock was taken (the data cannot be loaded): a new workdir is
    removed whole; in an existing one, the lock and folder index it made are removed."""
    bad = dict(source="folder", path=str(tmp_path / "no_such_folder"), name="folder",
               num_train=None, num_test=None)
    with pytest.raises(train.BadInput, match="no_such_folder"):
        train.train_and_evaluate(smoke(bad), tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(train.BadInput, match="no_such_folder"):
        train.train_and_evaluate(smoke(bad), existing)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    # A workdir that is a file: one line, and the file stays.
    (tmp_path / "file").write_text("x")
    with pytest.raises(train.BadInput, match="is a file, not a directory"):
        train.train_and_evaluate(smoke(), tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_malformed_run_files_are_one_line_errors_naming_the_file(pristine, tmp_path):
    workdir = copy_run(pristine, tmp_path)
    for text in ("{not json", "[1, 2]", '{"model": {}}'):
        (workdir / "config.json").write_text(text)
        with pytest.raises(ValueError, match="config.json is damaged: ") as info:
            checkpoint.load_run(workdir)
        assert "\n" not in str(info.value) and str(workdir / "config.json") in str(info.value)


def test_a_full_disk_at_the_lock_metrics_or_samples_keeps_the_previous_files(tmp_path):
    with small_tmpfs(tmp_path / "disk") as disk:
        metrics = reporting.MetricsWriter(disk)
        metrics.write(1, {"train/bpd": 1.0})
        png = disk / "samples.png"
        reporting.save_image_grid(png, np.zeros((4, 8, 8, 1), np.int32), 2)
        before = snapshot(disk)
        fill(disk)
        with pytest.raises(OSError):
            metrics.write(2, {"train/bpd": 0.5, **{f"x{i}": float(i) for i in range(999)}})
        with pytest.raises(OSError):
            reporting.save_image_grid(png, np.ones((64, 8, 8, 1), np.int32), 2, scale=64)
        with pytest.raises(ValueError, match="--workdir: cannot (create|write) the lock file"):
            lock.WorkdirLock(disk).acquire()
        (disk / "filler").unlink()
        assert snapshot(disk) == before  # nothing partial, no lock, no temporary file
        metrics.close()


# -------------------------------------------------------------- readers racing with pruning


def test_readers_never_fail_while_a_trainer_saves_and_prunes(pristine, tmp_path):
    """A trainer keeping one checkpoint saves a new step again and again (each save prunes
    the one before) while `load_run` (what jaxar-sample uses) reads in a loop: every read
    returns a complete step, and the reads abandoned meanwhile leave nothing to report
    when they are collected (pytest turns such a report into an error)."""
    workdir = copy_run(pristine, tmp_path)
    cfg = smoke()
    trainer = train.Trainer(jaxar.build_model(cfg), cfg)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=1)
    restored = ckpt.restore_latest(trainer.abstract_state)
    saves, reads, errors, done = 16, [], [], threading.Event()

    def read():
        while not done.is_set() or len(reads) < 3:
            try:
                reads.append(checkpoint.load_run(workdir)[3])
            except Exception as err:  # noqa: BLE001 (counted: the test's subject)
                errors.append(checkpoint.one_line(err))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(7, 7 + saves):
            ckpt.save(step, restored.state, restored.data, cfg)
        ckpt.close()
    finally:
        done.set()
        reader.join(timeout=120)
    assert not errors, errors[:3]
    assert len(reads) >= 3 and set(reads) <= set(range(6, 7 + saves))
    assert checkpoint.finished_steps(workdir / "checkpoints") == [6 + saves]
    gc.collect()


def run_keeping_one_step(pristine, tmp_path):
    """A copy of the pristine run with its newest checkpoint only (max_to_keep=1):
    (workdir, its checkpoint directory)."""
    workdir = copy_run(pristine, tmp_path)
    directory = workdir / "checkpoints"
    for step in checkpoint.finished_steps(directory)[:-1]:
        shutil.rmtree(directory / str(step))
    return workdir, directory


def pruned_under_every_read(monkeypatch, directory, reads_lost: int):
    """The first `reads_lost` reads of `load_run` lose their step as a fast trainer would
    take it: the step being read is renamed to the next one (a newer step finished, the
    read one pruned) before the read starts. Returns the list of steps lost."""
    restore = checkpoint.restore_newest
    lost = []

    def racing(manager, directory_, make_target, **kwargs):
        if len(lost) < reads_lost:
            (step,) = checkpoint.finished_steps(directory)
            (directory / str(step)).rename(directory / str(step + 1))
            lost.append(step)
        return restore(manager, directory_, make_target, **kwargs)

    monkeypatch.setattr(checkpoint, "restore_newest", racing)
    return lost


def test_a_reader_outlasts_a_trainer_pruning_every_step_it_lists(pristine, tmp_path,
                                                                 monkeypatch):
    """More reads lost to pruning in a row than READ_ATTEMPTS: the reader keeps going
    while each loss follows a new step, and returns the step that stayed."""
    workdir, directory = run_keeping_one_step(pristine, tmp_path)
    (last,) = checkpoint.finished_steps(directory)
    lost = pruned_under_every_read(monkeypatch, directory, checkpoint.READ_ATTEMPTS + 3)
    *_, step = checkpoint.load_run(workdir)
    assert lost == list(range(last, last + checkpoint.READ_ATTEMPTS + 3))
    assert step == last + checkpoint.READ_ATTEMPTS + 3


def test_a_reader_that_loses_every_read_says_so(pristine, tmp_path, monkeypatch):
    """A trainer that always prunes first: after READ_RETRY_SECONDS the error says that
    the steps were pruned under the reads, not that the workdir holds none."""
    workdir, directory = run_keeping_one_step(pristine, tmp_path)
    monkeypatch.setattr(checkpoint, "READ_RETRY_SECONDS", 1.5)
    lost = pruned_under_every_read(monkeypatch, directory, reads_lost=10**6)
    with pytest.raises(ValueError, match=r"every checkpoint listed was pruned while it was "
                                         r"read \(\d+ listings in \d+ s; the last \[\d+\]\)"
                       ) as err:
        checkpoint.load_run(workdir)
    assert "holds no checkpoint" not in str(err.value)
    assert len(lost) > checkpoint.READ_ATTEMPTS and "\n" not in str(err.value)


# ----------------------------------------------------- orbax's tracebacks, for every loader


def test_closed_event_loop_tracebacks_are_dropped_for_every_loader(pristine, tmp_path,
                                                                  capfd, caplog):
    """load_run (the sampler's loader) installs the same quieting as the trainer: a damaged
    latest checkpoint falls back with a warning and no traceback; "Event loop is closed"
    reports are dropped and asyncio's task tracebacks are one line."""
    workdir = copy_run(pristine, tmp_path)
    for f in (workdir / "checkpoints" / "6" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"not a checkpoint")
    assert checkpoint.load_run(workdir)[3] == 3
    gc.collect()
    assert sys.unraisablehook is checkpoint._drop_abandoned_io_reports
    seen = []
    checkpoint._drop_abandoned_io_reports.previous = seen.append
    try:
        for error in (RuntimeError("Event loop is closed"), RuntimeError("other")):
            sys.unraisablehook(type("Info", (), {"exc_value": error, "object": None})())
    finally:
        checkpoint._drop_abandoned_io_reports.previous = sys.__unraisablehook__
    assert [str(info.exc_value) for info in seen] == ["other"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-2000:]
    try:
        raise ValueError("NOT_FOUND: Error opening a step that was pruned")
    except ValueError as error:
        logging.getLogger("asyncio").error(
            "Task exception was never retrieved\nfuture: <Task finished>", exc_info=error)
    (record,) = [r for r in caplog.records if r.name == "asyncio"]
    assert record.exc_info is None and record.getMessage() == (
        "Task exception was never retrieved (ValueError: NOT_FOUND: Error opening a step "
        "that was pruned)")


def test_reads_abandoned_mid_restore_leave_nothing_to_report(pristine, tmp_path,
                                                             monkeypatch, capfd):
    """The newest step is pruned while its arrays are being read: one read fails, the
    others are still in flight when orbax gives up the restore and closes its event loop.
    load_run reads the older step, and the abandoned reads, once collected, report nothing
    (orbax turns the GeneratorExit that closes each into an error of its own)."""
    workdir = copy_run(pristine, tmp_path)
    newest = workdir / "checkpoints" / "6"
    read_shard, reads_of_newest = serialization._read_shard, []

    async def pruned_mid_read(*, t, **kwargs):
        if f"{os.sep}checkpoints{os.sep}6{os.sep}" not in json.dumps(t.spec().to_json()):
            return await read_shard(t=t, **kwargs)
        reads_of_newest.append(t)
        if len(reads_of_newest) > 1:
            await asyncio.Event().wait()  # in flight until the restore is abandoned
        await asyncio.sleep(0.2)  # the other arrays' reads start meanwhile
        shutil.rmtree(newest)
        raise FileNotFoundError(f"{newest} was pruned")

    monkeypatch.setattr(serialization, "_read_shard", pruned_mid_read)
    assert checkpoint.load_run(workdir)[3] == 3
    assert len(reads_of_newest) > 10 and not newest.exists()
    seen = []
    monkeypatch.setattr(checkpoint._drop_abandoned_io_reports, "previous", seen.append)
    gc.collect()
    assert seen == [], [checkpoint.one_line(info.exc_value) for info in seen[:3]]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "reading array index" not in err, err[-2000:]

"""Failure paths of `python -m jaxar.cli.train`: each ends within seconds with one line
and a non-zero exit code, and every checkpoint left behind still restores.

Faults are real where this machine lets the test make them (a read-only bind mount,
a full tmpfs: root with mount rights); elsewhere an OSError is injected at the same
place by tests/fault_cli.py.
"""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxar.training import checkpoint, lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke")
FAULT_CLI = str(ROOT / "tests" / "fault_cli.py")
TIMEOUT = 120  # the hangs these tests guard against were endless
# A run long enough to be interrupted: a checkpoint every 2 steps, little else.
LONG = ["--config.train.num_steps=400", "--config.train.checkpoint_every_steps=2",
        "--config.train.log_every_steps=50", "--config.train.eval_every_steps=400",
        "--config.train.sample_every_steps=400"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Child processes share a persistent compilation cache: only the first compiles."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def train_cmd(workdir, *overrides, fault=None):
    prefix = [sys.executable, FAULT_CLI, *fault] if fault else [sys.executable, "-m",
                                                                 "jaxar.cli.train"]
    return [*prefix, "--config", SMOKE, "--workdir", str(workdir), *overrides]


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress bar (carriage-return updates) and empty lines."""
    lines = [part for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line.strip() and not line.startswith("train:")]


def assert_one_line_failure(result, code: int, *phrases: str) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    last = error_lines(result.stderr)[-1]
    assert last.startswith("jaxar.cli.train: error: "), result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in last, last
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return last


def assert_every_checkpoint_restores(workdir) -> list[int]:
    steps = checkpoint.finished_steps(pathlib.Path(workdir) / "checkpoints")
    assert steps, "a checkpoint written before the fault must be left"
    for step in steps:
        assert checkpoint.load_run(workdir, step)[3] == step
    assert checkpoint.load_run(workdir)[3] == steps[-1]
    return steps


def wait_for_checkpoint(workdir, proc) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.finished_steps(pathlib.Path(workdir) / "checkpoints"):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def finish(proc) -> tuple[subprocess.CompletedProcess, float]:
    """Waits for `proc` (killing it past TIMEOUT); its result and the seconds waited."""
    start = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the trainer was still running {TIMEOUT} s after the fault")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), \
        time.monotonic() - start


def _run(*cmd) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def mounted(*mount_args, target, read_only=False):
    """`mount *mount_args target`, then (read_only) a read-only remount; retried, since a
    directory being written refuses at times. Yields whether it worked; unmounts after."""
    ok = False
    for _ in range(0 if os.environ.get("JAXAR_TEST_NO_MOUNT") else 10):  # 1: test the fallback
        if _run("mount", *mount_args, str(target)):
            if not read_only or _run("mount", "-o", "remount,bind,ro", str(target)):
                ok = True
                break
            _run("umount", "-l", str(target))
        time.sleep(0.1)
    try:
        yield ok
    finally:
        if ok:
            _run("umount", "-l", str(target))


def can_mount(tmp_path) -> bool:
    probe = tmp_path / "mount_probe"
    probe.mkdir()
    with mounted("--bind", str(probe), target=probe, read_only=True) as ok:
        return ok


def test_checkpoint_dir_turning_read_only_mid_run(tmp_path, env):
    workdir = tmp_path / "run"
    if can_mount(tmp_path):
        proc = subprocess.Popen(train_cmd(workdir, *LONG), env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        wait_for_checkpoint(workdir, proc)
        directory = workdir / "checkpoints"
        with mounted("--bind", str(directory), target=directory, read_only=True) as ok:
            assert ok, "the read-only bind mount failed"
            result, seconds = finish(proc)
        phrases = ["saving checkpoints in", "failed"]
    else:  # no mount rights: the 3rd save raises what a read-only directory raises
        proc = subprocess.Popen(train_cmd(workdir, *LONG, fault=["checkpoint_ro", "3"]),
                                env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        result, seconds = finish(proc)
        phrases = ["saving checkpoints in", "Read-only file system"]
    last = assert_one_line_failure(result, 1, *phrases, "a re-run resumes from it")
    assert seconds < 60, f"{seconds:.0f} s to exit"
    steps = assert_every_checkpoint_restores(workdir)
    assert f"checkpoint is step {steps[-1]} " in last


def test_full_disk_mid_run(tmp_path, env):
    workdir = tmp_path / "disk"
    workdir.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=8m", "tmpfs", target=workdir) as ok:
        if ok:
            proc = subprocess.Popen(train_cmd(workdir / "run", *LONG), env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            wait_for_checkpoint(workdir / "run", proc)
            filler = workdir / "filler"
            # The run may have filled the disk already: then the file cannot be made.
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:  # fill every byte left
                    f.write(b"\0" * 65536)
                    f.flush()
            result, seconds = finish(proc)
            filler.unlink(missing_ok=True)
        else:  # no mount rights: the 3rd save raises ENOSPC
            proc = subprocess.Popen(
                train_cmd(workdir / "run", *LONG, fault=["checkpoint_full", "3"]), env=env,
                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True)
            result, seconds = finish(proc)
        last = assert_one_line_failure(result, 1, "failed", "a re-run resumes from it")
        assert any(s in last for s in ("No space left", "RESOURCE_EXHAUSTED", "ENOSPC")), last
        assert seconds < 60, f"{seconds:.0f} s to exit"
        assert_every_checkpoint_restores(workdir / "run")


@pytest.mark.parametrize("fault,phrase", [
    (["metrics", "3"], "writing the metrics of step 4"),  # after step 2's and 3's
    (["data", "4"], "reading the training data for step 4"),
])
def test_metrics_writer_and_data_loader_failures(tmp_path, env, fault, phrase):
    start = time.monotonic()
    result = subprocess.run(train_cmd(tmp_path / "run", fault=fault), env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert_one_line_failure(result, 1, phrase, "OSError", "checkpoint is step 3")
    assert time.monotonic() - start < TIMEOUT
    assert assert_every_checkpoint_restores(tmp_path / "run") == [3]


def test_diverging_run_stops_in_one_line_and_keeps_no_poisoned_checkpoint(tmp_path, env):
    """The issue's case: learning_rate=1e30 gave a FloatingPointError traceback and left
    a NaN checkpoint as the latest."""
    result = subprocess.run(
        train_cmd(tmp_path / "run", "--config.train.learning_rate=1e30",
                  "--config.train.checkpoint_every_steps=1"),
        env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert_one_line_failure(result, 1, "training diverged", "at step 2",
                            "no checkpoint is left: a re-run starts from scratch")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert [n for n in names if n.isdigit()] == []
    assert "diverged-1" in names  # params after step 1 (finite, absurd) gave the NaN loss


def test_one_writer_per_workdir(tmp_path, env):
    """A second trainer on a busy workdir exits 2 in one line; the first (stopped while
    the second tries, so the timing cannot vary) finishes untouched. A lock left by a
    killed process is taken over."""
    workdir = tmp_path / "run"
    first = subprocess.Popen(train_cmd(workdir), env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        lock_file = workdir / ".lock"
        deadline = time.monotonic() + TIMEOUT
        while not (lock_file.exists() and lock_file.read_text().startswith(f"{first.pid} ")):
            assert first.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = subprocess.run(train_cmd(workdir), env=env, capture_output=True,
                                    text=True, timeout=TIMEOUT)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert_one_line_failure(second, 2, "is in use", f"process {first.pid} on")
        result, _ = finish(first)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint.finished_steps(workdir / "checkpoints") == [3, 6]

    # A lock file that names a process killed while holding it is taken over.
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from jaxar.training import lock; "
         "lock.WorkdirLock(sys.argv[1]).acquire(); print(os.getpid(), flush=True); "
         "os.kill(os.getpid(), signal.SIGKILL)", str(workdir)],
        env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL
    assert (workdir / ".lock").read_text().split()[0] == killed.stdout.strip()
    lock.WorkdirLock(workdir).acquire().release()

"""Preemption and warm starts of `python -m jaxar.cli.train`.

SIGTERM / SIGINT end a run after the step in flight with a checkpoint of that step (all
processes of a two-process run at the same step), exit 143 / 130 within seconds, and the
re-run continues to exactly the uninterrupted run's end; a second signal aborts at once
and leaves the checkpoints on disk whole. A second run with a warm compilation cache
compiles nothing. (SIGKILL: tests/test_soak.py; write faults: tests/test_faults.py.)
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker
import pytest
from test_faults import TIMEOUT, error_lines, finish

from jaxar.training import checkpoint, preemption, reporting

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "made_mnist.py:smoke")  # the cheapest smoke model
HOLD_CLI = str(ROOT / "tests" / "preemption_cli.py")
NUM_STEPS = 300
# Periodic checkpoints are rare: only the last step's (and the preemption's) are saved.
RARE = [f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every_steps=1000",
        "--config.train.log_every_steps=10", "--config.train.eval_every_steps=150",
        "--config.train.sample_every_steps=1000"]
DEVICES = 2  # two processes of one device, or one process of two: the same numbers


def two_devices(env: dict) -> dict:
    flag = f"--xla_force_host_platform_device_count={DEVICES}"
    return {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {flag}".strip()}


def cli(workdir, *extra, hold=None) -> list[str]:
    """The train command; `hold` = (marker, nth, seconds) holds the nth checkpoint's
    write open (tests/preemption_cli.py)."""
    prefix = [sys.executable, HOLD_CLI, *map(str, hold)] if hold else [
        sys.executable, "-m", "jaxar.cli.train"]
    return [*prefix, "--config", CONFIG, "--workdir", str(workdir), *RARE, *extra]


STARTED: list[subprocess.Popen] = []


def start(command, env) -> subprocess.Popen:
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def no_trainer_left():
    """A failed test kills the trainers it started."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def logged_steps(workdir) -> list[int]:
    try:
        return [r["step"] for r in reporting.read_metrics(workdir)]
    except (OSError, ValueError):  # a row being written
        return []


def wait_until(condition, procs, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"exited before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.02)


def stopped_line(result, signum: int) -> int:
    """The step named by the one line a signalled run ends with (checked)."""
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = error_lines(result.stderr)[-1]
    prefix = "jaxar.cli.train: stopped by "
    assert last.startswith(prefix) and "run the same command to resume" in last, last
    step = int(last.split(" after step ")[1].split(":")[0])
    assert f"saved the checkpoint at step {step} in " in last, last
    return step


def full_state(workdir, step):
    """The whole train state and data position of checkpoint `step`, on one device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    with ocp.CheckpointManager(directory, item_handlers=checkpoint._item_handlers()) as manager:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              manager.item_metadata(step)["state"])
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return jax.device_get(restored["state"]), restored["data"]


def steps_on_disk(workdir) -> list[int]:
    return checkpoint.finished_steps(pathlib.Path(workdir) / "checkpoints")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return two_devices(dict(os.environ))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted run (one process, two devices)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(cli(workdir), env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_watcher_sets_a_flag_and_a_second_signal_aborts():
    """One process: the first signal is a flag read between steps, the second raises
    KeyboardInterrupt (outside the CLI); the handlers before are restored."""
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    with preemption.Watcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in this thread at the next bytecode
        assert watcher.should_stop(2) and watcher.received() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
    with preemption.Watcher() as watcher:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert watcher.should_stop(1) and watcher.received() == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_signals_save_the_step_reached_and_the_rerun_ends_bitwise_as_uninterrupted(
        tmp_path, env, reference):
    """One workdir, four interrupted runs, then a run to the end:
    A  two processes; SIGINT to process 1: both save the same step (JAX's preemption
       sync point), exit 130 / 143.
    B  one process; SIGTERM while a checkpoint write is held open: the write completes,
       the step reached is saved, exit 143.
    D  one process; SIGINT twice while a checkpoint write is held open: exit 130 at
       once; the previous checkpoint stays the latest and restores.
    C  the rest: final state, data position and evaluations bitwise the reference's,
       every step logged once, the aborted write's temporary directory gone."""
    workdir = tmp_path / "run"
    port = portpicker.pick_unused_port()
    one_device = {**env, "XLA_FLAGS": env["XLA_FLAGS"].replace(
        f"device_count={DEVICES}", "device_count=1")}

    # A: two processes; process 1 gets SIGINT once process 0 has logged a few rows.
    procs = [start(cli(workdir, f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}"), one_device)
             for i in range(2)]
    wait_until(lambda: len(logged_steps(workdir)) >= 2, procs, "metrics from run A")
    os.kill(procs[1].pid, signal.SIGINT)
    sent = time.monotonic()
    results = [finish(p)[0] for p in procs]
    assert time.monotonic() - sent < 30
    # Both leave the coordination service together (sharding.leave_distributed): process
    # 1 outliving process 0, which hosts it, would log the service's error.
    for result in results:
        assert "coordination_service" not in result.stderr, result.stderr[-3000:]
    step_a = stopped_line(results[0], signal.SIGTERM)  # told by JAX's preemption service
    assert stopped_line(results[1], signal.SIGINT) == step_a
    assert 20 <= step_a < NUM_STEPS and steps_on_disk(workdir) == [step_a]

    # B: SIGTERM while the first periodic checkpoint's write is held open for 2 s.
    marker = tmp_path / "holding_b"
    proc = start(cli(workdir, "--config.train.checkpoint_every_steps=50",
                     hold=(marker, 1, 2)), env)
    wait_until(marker.exists, [proc], "held checkpoint write in run B")
    held_step = int(pathlib.Path(marker.read_text()).name.split(".")[0])
    os.kill(proc.pid, signal.SIGTERM)
    result, seconds = finish(proc)
    step_b = stopped_line(result, signal.SIGTERM)
    assert seconds < 30, f"{seconds:.0f} s to exit"
    assert f"resumed from the checkpoint at step {step_a}" in result.stdout
    assert held_step < step_b < NUM_STEPS
    assert steps_on_disk(workdir) == [step_a, held_step, step_b]
    for step in steps_on_disk(workdir):
        assert checkpoint.load_run(workdir, step)[3] == step

    # D: two SIGINTs while the next periodic checkpoint's write is held open for 60 s.
    marker = tmp_path / "holding_d"
    proc = start(cli(workdir, "--config.train.checkpoint_every_steps=50",
                     hold=(marker, 1, 60)), env)
    wait_until(marker.exists, [proc], "held checkpoint write in run D")
    held_tmp = pathlib.Path(marker.read_text())
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    result, seconds = finish(proc)
    assert result.returncode == 130, result.stderr[-3000:]
    assert seconds < 10, f"{seconds:.0f} s to abort"
    last = error_lines(result.stderr)[-1]
    assert "SIGINT again: stopped at once without saving" in last, last
    assert held_tmp.exists()  # the write was cut off ...
    assert steps_on_disk(workdir) == [step_a, held_step, step_b]  # ... and not a step
    assert checkpoint.load_run(workdir)[3] == step_b

    # C: to the end.
    result = subprocess.run(cli(workdir), env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from the checkpoint at step {step_b}" in result.stdout
    assert not held_tmp.exists()  # orbax removed the cut-off write's directory
    want_state, want_data = full_state(reference, NUM_STEPS)
    got_state, got_data = full_state(workdir, NUM_STEPS)
    assert got_data == want_data
    for want, got in zip(jax.tree.leaves(want_state), jax.tree.leaves(got_state), strict=True):
        np.testing.assert_array_equal(got, want)
    want_rows, got_rows = reporting.read_metrics(reference), reporting.read_metrics(workdir)
    assert [(r["step"], sorted(r)) for r in got_rows] == \
        [(r["step"], sorted(r)) for r in want_rows]
    evals = [r for r in want_rows if "eval/bpd" in r]
    assert [r["step"] for r in evals] == [150, 300]
    assert [r for r in got_rows if "eval/bpd" in r] == evals


# A listener in the trainer's process: JAX's persistent-cache events, printed at exit.
_COUNTING_CLI = """
import atexit, collections, json, runpy, sys
import jax
events = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kwargs: events.update([event]))
atexit.register(lambda: print("cache events " + json.dumps(events), file=sys.stderr))
sys.argv = ["jaxar.cli.train", *sys.argv[1:]]
runpy.run_module("jaxar.cli.train", run_name="__main__", alter_sys=True)
"""


def test_a_warm_compilation_cache_compiles_nothing(tmp_path):
    """jaxar-train's own cache (JAXAR_COMPILATION_CACHE, with no JAX_COMPILATION_CACHE_DIR
    set): the first run writes every program it compiles, the second reads every one
    from disk, and both end with the same numbers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["JAXAR_COMPILATION_CACHE"] = str(tmp_path / "cache")
    events, finals = [], []
    for run in ("cold", "warm"):
        workdir = tmp_path / run
        result = subprocess.run(
            [sys.executable, "-c", _COUNTING_CLI, "--config", CONFIG, "--workdir",
             str(workdir)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr[-3000:]
        line = [x for x in result.stderr.splitlines() if x.startswith("cache events ")][-1]
        events.append(json.loads(line.removeprefix("cache events ")))
        finals.append((full_state(workdir, 6), reporting.read_metrics(workdir)))
    cold, warm = events
    requests = "/jax/compilation_cache/compile_requests_use_cache"
    hits, misses = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
    assert cold[requests] >= 5 and cold.get(hits, 0) == 0 and cold[misses] == cold[requests]
    assert warm[requests] == cold[requests] and warm[hits] == warm[requests], warm
    assert warm.get(misses, 0) == 0, warm
    assert any((tmp_path / "cache").iterdir())
    ((cold_state, cold_data), cold_rows), ((warm_state, warm_data), warm_rows) = finals
    assert warm_data == cold_data
    for a, b in zip(jax.tree.leaves(cold_state), jax.tree.leaves(warm_state), strict=True):
        np.testing.assert_array_equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train/images_per_sec"}
                          for r in rows]
    assert strip(warm_rows) == strip(cold_rows)

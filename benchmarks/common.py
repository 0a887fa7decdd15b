"""What the benchmarks share: timing (`now`, `timed`, `time_interleaved` for A/B runs
taken in turn), reporting (`log`, `report`, `machine`; `run_header` and `write_json` for
`--out`), the CPU's name, the library versions, and a jaxar train step built and compiled
ahead of time.

Every benchmark's `--out FILE` goes through `write_json`, which puts the run's header
(`run_header`: machine, UTC date, the command as typed, versions, the 1-minute load
average at start and end) at the top of the JSON; docs/figures.py names these in every
caption of the results and benchmarks pages.

Benchmarks import this module, never one another.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import jaxar
from jaxar import files, sampling
from jaxar.nn import fast_conv
from jaxar.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMPLS = ("auto", "im2col", "split", "plain")  # model.conv_impl values
MASKED = ("pixelcnn", "gated_pixelcnn")  # the models with masked convolutions ("split")


# --- timing and reporting -----------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def log(msg: str) -> None:
    print(msg, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call of `fn`, its arrays waited for."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def versions() -> dict:
    """The versions a figure depends on."""
    return {"jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
            "flax_version": flax.__version__, "python_version": platform.python_version()}


def machine_info() -> dict:
    """The machine a figure was measured on: CPU model, cores, AVX-512, memory, the jax
    backend and its devices."""
    try:
        with open("/proc/meminfo") as f:
            memory = int(f.readline().split()[1]) * 1024  # "MemTotal: N kB"
    except (OSError, ValueError, IndexError):
        memory = None
    devices = jax.devices()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "avx512": fast_conv.cpu_has_avx512(),
            "memory_bytes": memory, "backend": jax.default_backend(),
            "devices": f"{len(devices)} x {devices[0].device_kind}"}


def machine() -> str:
    """One line naming the CPU, its cores, the jax backend and version."""
    return (f"{cpu_model()} ({os.cpu_count()} cores), {jax.default_backend()}, "
            f"jax {jax.__version__}")


def command(script: str, argv: list[str] | None = None) -> str:
    """The command line that reruns this benchmark, as a user types it in the repository."""
    path = pathlib.Path(script).resolve()
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
        path = path.relative_to(ROOT)
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["launch/env.sh", "python", str(path), *args])


def run_header(script: str, argv: list[str] | None = None, out=None) -> dict:
    """What every figure made from a benchmark's JSON names, taken when the benchmark
    starts (`script`: its `__file__`; `argv`: its arguments, default `sys.argv[1:]`).
    An `out` path (`--out`) that cannot be written is refused now, before any work."""
    if out is not None:
        files.check_output(out, "--out", (".json",))
    return {"command": command(script, argv),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": versions(),
            "load_1min_start": os.getloadavg()[0]}


def write_json(path, report: dict, header: dict) -> None:
    """`--out`: `{"header": header (with the 1-minute load average now), **report}` as
    indented JSON, written atomically (a run rewriting it as it goes leaves a whole file)."""
    full = {"header": {**header, "load_1min_end": os.getloadavg()[0]}, **report}
    files.write_text(path, json.dumps(full, indent=1, default=float) + "\n")


def time_interleaved(steps: dict, rounds: int) -> dict:
    """Runs each step once (warm-up), then all in turn for `rounds` rounds; per step:
    {"first_s", "seconds" (the timed steps), "losses" (every step's, warm-up first)}."""
    out = {name: {"seconds": [], "losses": []} for name in steps}
    for name, step in steps.items():
        start = time.perf_counter()
        out[name]["losses"].append(step())
        out[name]["first_s"] = time.perf_counter() - start
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            out[name]["losses"].append(step())
            out[name]["seconds"].append(time.perf_counter() - start)
    return out


def report(title: str, batch_size: int, timed: dict, compare: list[tuple[str, str]]) -> None:
    """Prints each step's s/step, images/s, first and last loss, and the `compare` ratios."""
    print(title)
    rate = {}
    for name, r in timed.items():
        step_s = statistics.median(r["seconds"])
        rate[name] = batch_size / step_s
        print(f"  {name:12s} {step_s:7.3f} s/step {rate[name]:7.3g} images/s  (first step "
              f"{r['first_s']:.1f} s; loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} "
              f"bits/dim over {len(r['losses'])} steps)")
    print("  " + " | ".join(f"{a} / {b} {rate[a] / rate[b]:.2f}x" for a, b in compare), flush=True)


# --- jaxar train steps ---------------------------------------------------------------


def random_batch(model, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, model.num_levels, (batch_size, *model.event_shape)).astype(np.int32)
    labels = rng.integers(0, model.num_classes, batch_size).astype(np.int32) \
        if model.num_classes else None
    return {"x": jnp.asarray(x), "labels": labels, "cond": model.derive_cond(x)}


def first(analysis):
    """cost_analysis() is a dict, or a list of one dict in older jax."""
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    return analysis or {}


def peak_bytes(compiled) -> tuple[int, dict]:
    """Peak device memory of an executable (arguments + outputs - donated aliases +
    temporaries, or XLA's own peak figure if larger), and the parts it is made of."""
    m = compiled.memory_analysis()
    parts = {k: int(getattr(m, k, 0) or 0) for k in (
        "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
        "temp_size_in_bytes", "generated_code_size_in_bytes")}
    summed = (parts["argument_size_in_bytes"] + parts["output_size_in_bytes"]
              - parts["alias_size_in_bytes"] + parts["temp_size_in_bytes"])
    # XLA:CPU's peak_memory_in_bytes leaves out the temporaries: the larger figure.
    parts["peak_memory_in_bytes"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    return max(summed, parts["peak_memory_in_bytes"]), parts


def abstract_batch(trainer, host_batch, batch_size):
    return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype,
                                    sharding=trainer.batch_sharding)
            for k, v in host_batch.items()}


def build(cfg, impl=None, dtype="float32"):
    """The model and a one-device Trainer of a copy of `cfg` with this conv_impl and dtype."""
    cfg = cfg.copy_and_resolve_references()
    if impl is not None:
        cfg.model.conv_impl = impl
    cfg.train.compute_dtype = dtype
    model = jaxar.build_model(cfg)
    return model, train.Trainer(model, cfg, devices=jax.devices()[:1])


def later(pool, fn):
    """A future of fn(): run in `pool` (a thread: compiles overlap on accelerator hosts),
    or now when there is none."""
    if pool is not None:
        return pool.submit(fn)
    done = concurrent.futures.Future()
    done.set_result(fn())
    return done


def compile_step(trainer, host_batch, pool=None, memory_at_double=False):
    """The trainer's step compiled ahead of time (timed) and XLA's figures of it: a
    figures dict, with the executable and device batch under "_compiled", "_batch".

    With `memory_at_double`, "peak_memory_bytes_at_2x_batch" is a future (`later`) of
    the peak memory of the same step compiled for twice the batch."""
    batch = trainer.device_batch(host_batch)
    size = len(host_batch["x"])
    double = None
    if memory_at_double:  # memory is linear in the batch: its slope from a second compile
        twice = abstract_batch(trainer, host_batch, 2 * size)
        double = lambda: peak_bytes(
            trainer.train_step.lower(trainer.abstract_state, twice).compile())[0]
        if pool is not None:  # compiles while this one does
            double = later(pool, double)
    start = now()
    lowered = trainer.train_step.lower(trainer.abstract_state, batch)
    compiled = lowered.compile()
    compile_s = now() - start
    cost = first(compiled.cost_analysis())
    peak, parts = peak_bytes(compiled)
    row = {
        "batch": size, "compile_s": compile_s,
        "flops_per_step": float(cost.get("flops", float("nan"))),
        "bytes_accessed_per_step": float(cost.get("bytes accessed", float("nan"))),
        "peak_memory_bytes": peak, "memory_analysis": parts,
        "_compiled": compiled, "_batch": batch,
    }
    if double is not None:
        row["peak_memory_bytes_at_2x_batch"] = (double if pool is not None
                                                else later(None, double))
    return row


def unsolved_dims(model, args, samples) -> int:
    """Dimensions of `samples` that one full-network Jacobi pass changes: 0 when they are
    exactly the full network's ancestral samples. When cached and fixed_point differ, this
    says which one the full network's own arithmetic disagrees with."""
    redrawn = sampling.jitted_redraw(model, *args, samples)
    return int(np.sum(np.asarray(redrawn) != np.asarray(samples)))


def pp_batch_and_config(spec: str, batch_size: int, impl: str = "auto"):
    """The config (batch `batch_size`, `model.conv_impl=impl`) and a random batch of its shape."""
    cfg = jaxar.load_config(str(ROOT / spec))
    cfg.model.conv_impl = impl
    cfg.train.batch_size = batch_size
    cfg.train.init_batch_size = min(cfg.train.init_batch_size, batch_size)
    batch = random_batch(jaxar.build_model(cfg), batch_size)
    return cfg, {k: np.asarray(v) for k, v in batch.items() if v is not None}


def pp_jax_step(cfg, host_batch):
    """The trainer's jitted step, compiled ahead of time: (step returning the loss in
    bits/dim, compile seconds, parameter count)."""
    _, trainer = build(cfg)
    row = compile_step(trainer, host_batch)
    state = trainer.init_state(jax.random.PRNGKey(cfg.seed), host_batch)
    num_params = int(sum(np.size(p) for p in jax.tree.leaves(state.params)))

    def step():
        nonlocal state
        state, metrics = jax.block_until_ready(row["_compiled"](state, row["_batch"]))
        return float(metrics["train/bpd"])

    return step, row["compile_s"], num_params

"""Every accelerator figure in one command: train-step speed, FLOP utilization, memory,
compile time, each conv_impl, and sampling time, printed and written to one JSON file.

  python benchmarks/accelerator.py --out accelerator.json          # the paper configs
  python benchmarks/accelerator.py --quick --out quick.json        # < 8 min on one GPU
  python benchmarks/accelerator.py --tiny --out tiny.json          # smoke config, CPU, seconds

For each config (the seed PixelCNN, PixelCNN++ `paper`, PixelSNAIL `paper`; with `--tiny`
the PixelCNN `smoke` config only, see TINY_CONFIGS) the trainer's own jitted train step
(`jaxar.training.train.Trainer.train_step`: loss, gradient, clipping, Adam, EMA) is built
on one device and compiled ahead of time (`lower(...).compile()`, timed), for float32
and for bf16 compute (`train.compute_dtype="bfloat16"`), at the config's per-device batch
(`--batch` overrides; `--quick` on CPU takes small batches). From XLA's own analysis of
the compiled step: FLOPs and bytes accessed per step (`cost_analysis()`) and peak memory
(`memory_analysis()`: arguments + outputs - donated + temporaries); compiling the same
step at twice the batch gives memory's slope in the batch, hence the largest per-device
batch that fits the device's memory (`memory_stats()["bytes_limit"]`, what XLA's
allocator may take; on CPU the machine's RAM, /proc/meminfo). Every `model.conv_impl`
("auto", "plain", "im2col", and "split" for the masked-convolution models) gets its own
float32 step, except those that resolve as "auto" does on this backend
(`jaxar.nn.fast_conv.resolve_impl`), which share auto's, so `auto` can be set per
backend from measurement. All steps of a config are compiled first, run once (warm-up),
then timed in turn for `--steps` rounds as in benchmarks/train_throughput.py (load from
other processes hits all alike); the median gives images/s, the achieved TFLOP/s and the
model FLOP utilization (MFU) against the device's peak, both from the model's FLOPs per
step (`count_model_flops`: the float32 auto step's, whatever the dtype or impl; XLA's
count of each compiled step is in the JSON too, short of loops' repeats). The peak is the
dense data-sheet figure of a known chip (`PEAKS`; float32 steps also get `mfu_vs_tf32`,
as XLA runs float32 convolutions in TF32 on those GPUs) or, on CPU and unknown chips, the
best jitted matmul measured in this run, next to each config's timed steps.

Sampling: PixelCNN++ `paper` (random init: speed does not depend on the weights, though
fixed-point passes do), 256 CIFAR-size samples (`--samples`) with `cached` and
`fixed_point` (its network passes reported), and `naive` timed on its first
`--naive_steps` steps and extrapolated linearly (its cost per step is constant). The
samples are compared: fixed_point's with cached's (all) and naive's (its timed steps),
naive's with cached's; where they differ, the JSON says how many dimensions and from which
step (a draw that sits on a rounding boundary can flip between two compiled programs
that round differently, and the rest of that sample follows it), and how many dimensions
of each method's samples one full-network pass changes (0: exactly the full network's
ancestral samples; so a cached sample off by one rounding flip shows there). Each sampler is
compiled ahead of time, then timed once; fixed_point, whose passes are not known in
advance, runs last. With random weights the conditionals hardly depend on the context,
so fixed_point converges in far fewer passes than it would for a trained model.

The JSON (`--out`, benchmarks/common.py's header first) is rewritten after every
measurement, so a run cut short keeps what it measured. See docs/benchmarks.md for the
figures measured so far.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks.common import (  # noqa: E402
    IMPLS,
    MASKED,
    abstract_batch,
    build,
    compile_step,
    cpu_model,
    first,
    log,
    now,
    random_batch,
    run_header,
    unsolved_dims,
    versions,
    write_json,
)
from jaxar import sampling  # noqa: E402
from jaxar.models import base, common  # noqa: E402
from jaxar.nn import fast_conv  # noqa: E402

# name, config, per-device batch of the config (the paper configs' global batch is 8
# devices' worth), batch of --quick on CPU.
CONFIGS = [
    ("pixelcnn_seed", "experiments/pixelcnn_mnist.py:seed", 128, 128),
    ("pixelcnn_pp_paper", "experiments/pixelcnn_pp_cifar10.py:paper", 16, 2),
    ("pixelsnail_paper", "experiments/pixelsnail_cifar10.py:paper", 8, 1),
]
# --tiny: the same code path on the smallest model only. XLA:CPU takes 8-40 s per compile
# of the PixelCNN++ and PixelSNAIL smoke train steps on a 2-core CPU (bf16 about twice
# float32), and a run compiles 5 per config; pass them with --configs to run them anyway.
TINY_CONFIGS = [("pixelcnn_smoke", "experiments/pixelcnn_mnist.py:smoke", None, None)]
SAMPLING = {"full": "experiments/pixelcnn_pp_cifar10.py:paper",
            "tiny": "experiments/pixelcnn_mnist.py:smoke"}
DTYPES = ("float32", "bfloat16")

# Dense peak TFLOP/s per chip (vendor data sheets, SXM parts): (device_kind substring,
# float32 without tensor cores, TF32 tensor cores, bfloat16). The first match wins. XLA
# runs float32 convolutions and matmuls on GPUs in TF32 by default, so a float32 step's
# MFU against the float32 peak can exceed 1: "mfu_vs_tf32" is reported beside it.
# TPUs run float32 matmuls as several bf16 passes: no float32 peak given.
PEAKS = [
    ("h200", 67.0, 494.7, 989.0),
    ("h100", 67.0, 494.7, 989.0),
    ("a100", 19.5, 156.0, 312.0),
    ("v100", 15.7, None, 125.0),  # no bf16 tensor cores: its fp16 peak
    ("tpu v5 lite", None, None, 197.0),
    ("tpu v5e", None, None, 197.0),
    ("tpu v4", None, None, 275.0),
]

# Timed train steps, samples, naive steps and matmul size (device peak) per mode.
MODES = {
    "tiny": dict(steps=2, samples=4, naive_steps=8, matmul=1024),
    "quick": dict(steps=5, samples=256, naive_steps=32, matmul=4096),
    "full": dict(steps=20, samples=256, naive_steps=256, matmul=8192),
}


# --- the device -----------------------------------------------------------------------


def device_memory(device) -> tuple[int, str]:
    """Bytes of memory one device may use, and where that figure comes from."""
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), "memory_stats()['bytes_limit']"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024, "/proc/meminfo MemTotal"
    raise RuntimeError("no memory figure for this device")


def matmul_tflops(n: int, dtype, repeats: int = 5) -> float:
    """Best TFLOP/s of a jitted n x n matmul (compiled first)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(mm(a, b))
    best = math.inf
    for _ in range(repeats):
        start = now()
        jax.block_until_ready(mm(a, b))
        best = min(best, now() - start)
    return 2 * n**3 / best / 1e12


class Device:
    """The device's figures (`info`) and its peak TFLOP/s per dtype.

    Known chips take their data-sheet peak. On CPU (and unknown chips) the peak is the
    best jitted n x n matmul measured in this run, float32 and bf16 (bf16's peak: the
    faster of the two); `measure()` runs again next to every config's timed steps, and
    the best of all runs counts, so load from other processes at one moment does not
    lower it (MFU is recomputed from the final peak before each save)."""

    def __init__(self, matmul_n: int):
        device = jax.devices()[0]
        memory, memory_source = device_memory(device)
        self.matmul_n = matmul_n
        self.measured = {"float32": [], "bfloat16": []}
        self.known = next((p for p in PEAKS if p[0] in device.device_kind.lower()), None)
        self.info = {
            "kind": device.device_kind, "platform": device.platform,
            "count": jax.device_count(), "memory_bytes": memory,
            "memory_source": memory_source, "matmul_n": matmul_n,
            "host_cpu": cpu_model(), "host_cpu_cores": os.cpu_count(),
        }
        if device.platform == "cpu":
            self.info["cpu_model"] = self.info["host_cpu"]
        self.measure()

    def measure(self) -> None:
        for dtype, runs in self.measured.items():
            runs.append(matmul_tflops(self.matmul_n, jnp.dtype(dtype)))
        best = {d: max(r) for d, r in self.measured.items()}
        if self.known is not None:
            peak = dict(zip(("float32", "tf32", "bfloat16"), self.known[1:], strict=True))
            source = f"data sheet ({self.known[0]}), dense"
        else:
            peak = {"float32": best["float32"], "bfloat16": max(best.values())}
            source = (f"measured: best jitted {self.matmul_n}x{self.matmul_n} matmul of "
                      f"{len(self.measured['float32'])} runs in this run")
        self.info.update(peak_tflops=peak, peak_source=source, measured_matmul_tflops=best,
                         measured_matmul_tflops_runs=self.measured)

    def peak(self, dtype: str):
        return self.info["peak_tflops"].get(dtype)


# --- train steps ----------------------------------------------------------------------


def time_rounds(rows: dict, state0, steps: int) -> None:
    """Runs every compiled step once (warm-up), then `steps` rounds of one step each in
    turn, as benchmarks/train_throughput.py does (load from other processes hits all
    alike); adds the median step time, images/s and the last loss to each row."""
    states = {k: jax.tree.map(jnp.copy, state0) for k in rows}  # each step donates its state
    for k, row in rows.items():
        states[k], _ = jax.block_until_ready(row["_compiled"](states[k], row["_batch"]))
        row["step_s_all"] = []
    for _ in range(steps):
        for k, row in rows.items():
            start = now()
            states[k], metrics = jax.block_until_ready(row["_compiled"](states[k], row["_batch"]))
            row["step_s_all"].append(now() - start)
            row["loss_bpd"] = float(metrics["train/bpd"])
    for row in rows.values():
        row["step_s"] = statistics.median(row["step_s_all"])
        row["images_per_s"] = row["batch"] / row["step_s"]
        del row["_compiled"], row["_batch"]


def count_model_flops(cfg, host_batch) -> float:
    """FLOPs of one float32 "auto" train step: XLA's count of its unoptimized HLO, traced
    with `jaxar.nn.fast_conv.chunk_bytes` unbounded. XLA's cost analysis counts a loop's
    body once, and the im2col convolutions run over batch chunks in loops (`lax.map`,
    `lax.scan`), so the compiled step's own count ("flops_per_step") falls short by the
    number of chunks; with one chunk every loop runs once and the count is whole. Only
    traced (a fresh Trainer, so nothing cached is reused), never compiled."""
    _, trainer = build(cfg)
    with fast_conv.chunk_bytes(2**62):
        lowered = trainer.train_step.lower(
            trainer.abstract_state, abstract_batch(trainer, host_batch, len(host_batch["x"])))
    return float(first(lowered.cost_analysis())["flops"])


def derive(row: dict, dtype: str, device: Device, model_flops: float) -> None:
    """Adds achieved TFLOP/s and MFU to a step's figures (and, once its second compile is
    done, the memory per example and the largest per-device batch).

    Both count `model_flops` (`count_model_flops`), the same for every dtype and
    conv_impl of a config: a bf16 executable adds conversions, "plain" computes the
    masked taps of masked convolutions, neither of which is the model's work."""
    row["model_flops_per_step"] = model_flops
    row["tflops_achieved"] = model_flops / row["step_s"] / 1e12
    row["peak_tflops"] = peak = device.peak(dtype)
    row["mfu"] = row["tflops_achieved"] / peak if peak else None
    if dtype == "float32" and device.peak("tf32"):
        row["mfu_vs_tf32"] = row["tflops_achieved"] / device.peak("tf32")
    double = row.get("peak_memory_bytes_at_2x_batch")
    if isinstance(double, concurrent.futures.Future):
        row["peak_memory_bytes_at_2x_batch"] = double = double.result()
    if double is not None:
        b = row["batch"]
        per_example = (double - row["peak_memory_bytes"]) / b
        fixed = row["peak_memory_bytes"] - per_example * b
        row["memory_bytes_per_example"] = per_example
        row["memory_bytes_fixed"] = fixed
        row["max_batch_per_device"] = (int((device.info["memory_bytes"] - fixed) // per_example)
                                       if per_example > 0 else None)


def impl_plan(cfg, model) -> dict | None:
    """conv_impl -> whether it needs its own step: False where it resolves (every kind of
    layer, `jaxar.nn.fast_conv.resolve_impl`) as "auto" does on this backend."""
    if not hasattr(model, "conv_impl"):
        return None
    impls = IMPLS if cfg.model.name in MASKED else tuple(i for i in IMPLS if i != "split")
    resolved = lambda i: (fast_conv.resolve_impl(i, masked=True), fast_conv.resolve_impl(i))
    return {i: i != "auto" and resolved(i) != resolved("auto") for i in impls}


IMPL_FIGURES = ("compile_s", "step_s", "images_per_s", "tflops_achieved", "mfu", "loss_bpd")


def measure_config(name, spec, batch_size, steps, device: Device, pool=None) -> dict:
    """Every train-step figure of one config: both dtypes, then each conv_impl."""
    cfg = jaxar.load_config(str(ROOT / spec))
    if batch_size is not None:
        cfg.train.batch_size = batch_size
    cfg.train.init_batch_size = min(cfg.train.init_batch_size, cfg.train.batch_size)
    model, trainer = build(cfg)
    batch = random_batch(model, cfg.train.batch_size)
    host_batch = {"x": np.asarray(batch["x"])}
    if model.num_classes:
        host_batch["labels"] = np.asarray(batch["labels"])
    start = now()
    state0 = jax.block_until_ready(trainer.init_state(jax.random.PRNGKey(0), host_batch))
    init_s = now() - start
    model_flops = count_model_flops(cfg, host_batch)
    result = {
        "name": name, "config": spec, "model": cfg.model.name,
        "event_shape": list(model.event_shape), "per_device_batch": cfg.train.batch_size,
        "steps_timed": steps, "init_s": init_s, "model_flops_per_step": model_flops,
        "num_params": int(sum(np.size(p) for p in jax.tree.leaves(state0.params))),
    }
    trainers = {"float32": trainer, "bfloat16": build(cfg, dtype="bfloat16")[1]}
    plan = impl_plan(cfg, model)
    for impl, own in (plan or {}).items():
        if own:
            trainers[impl] = build(cfg, impl=impl)[1]
    rows = {}
    for key, tr in trainers.items():
        rows[key] = compile_step(tr, host_batch, pool, memory_at_double=key in DTYPES)
        log(f"    compiled {key}: {rows[key]['compile_s']:.1f} s")
    device.measure()  # the CPU peak next to the timed steps
    time_rounds(rows, state0, steps)
    device.measure()
    for key, row in rows.items():
        derive(row, key if key in DTYPES else "float32", device, model_flops)
    for dtype in DTYPES:
        result[dtype] = rows[dtype]
        log(f"  {name} {dtype}: {fmt_row(rows[dtype])}")
    if plan is None:
        result["conv_impl"] = {"skipped": "the model has no conv_impl switch"}
        return result
    impls = {}
    for impl, own in plan.items():
        impls[impl] = {k: rows[impl if own else "float32"][k] for k in IMPL_FIGURES}
        impls[impl]["same_as_auto"] = not own
    fastest = max(impls, key=lambda i: impls[i]["images_per_s"])
    auto = fast_conv.resolve_impl("auto", masked=True), fast_conv.resolve_impl("auto")
    result["conv_impl"] = {"auto_resolves_to": {"masked": auto[0], "other": auto[1]},
                           "impls": impls, "fastest": fastest}
    log("    conv_impl (float32): " + " | ".join(
        f"{i} {r['images_per_s']:.3g} img/s" + (" (=auto)" if r["same_as_auto"] and i != "auto"
                                                 else "") for i, r in impls.items())
        + f" -> fastest {fastest}")
    return result


def refresh_mfu(report: dict, device: Device) -> None:
    """MFU of every row from the device's final peak (the CPU peak can still rise)."""
    for r in report["train"]:
        for dtype in DTYPES:
            derive(r[dtype], dtype, device, r["model_flops_per_step"])
        for row in r["conv_impl"].get("impls", {}).values():
            peak = device.peak("float32")
            row["mfu"] = row["tflops_achieved"] / peak if peak else None


def fmt_row(row: dict) -> str:
    mfu = f"{100 * row['mfu']:.2f}%" if row["mfu"] is not None else "n/a"
    maxb = row.get("max_batch_per_device")
    return (f"batch {row['batch']} {row['images_per_s']:.3g} img/s, step "
            f"{1e3 * row['step_s']:.1f} ms, compile {row['compile_s']:.1f} s, "
            f"{row['model_flops_per_step'] / 1e9:.2f} GFLOP/step (XLA's count of the "
            f"executable {row['flops_per_step'] / 1e9:.2f}), "
            f"{row['bytes_accessed_per_step'] / 1e9:.2f} GB accessed, "
            f"{row['tflops_achieved']:.3f} TFLOP/s, MFU {mfu}, peak mem "
            f"{row['peak_memory_bytes'] / 2**20:.1f} MiB, max batch/device {maxb}")


# --- sampling -------------------------------------------------------------------------


_ancestral = sampling.jitted_sample
_fixed_point = sampling.jitted_fixed_point


def compile_and_run(fn, static, args):
    """(compile seconds, run seconds, output) of `fn` compiled ahead of time, run once."""
    start = now()
    compiled = fn.lower(*static, *args).compile()
    compile_s = now() - start
    start = now()
    out = jax.block_until_ready(compiled(*args))
    return compile_s, now() - start, out


def differences(model, a, b) -> dict:
    """Where samples a and b differ: how many dimensions and samples, and the first
    generation step at which any sample differs (None: identical). A draw whose value
    sits on a rounding boundary can flip between two compiled programs that round
    differently, and every later step of that sample follows it."""
    order = base.generation_order(model)
    flat = lambda x: np.asarray(x).reshape(len(x), -1)[:, order]
    differ = flat(a) != flat(b)
    steps = [int(np.argmax(row)) for row in differ if row.any()]
    return {"differing_dims": int(differ.sum()), "differing_samples": len(steps),
            "first_differing_step": min(steps) if steps else None}


def same_text(sampling_figures: dict) -> str:
    fp = sampling_figures["fixed_point"]
    if fp["identical_to_cached"]:
        return "identical to cached"
    return (f"NOT identical to cached: {fp['differing_dims']} dims of "
            f"{fp['differing_samples']} samples differ, from step {fp['first_differing_step']}"
            f" (naive's timed steps identical: {fp['identical_to_naive_on_timed_steps']}; "
            f"dims one full-network pass changes: fixed_point {fp['unsolved_dims']}, cached "
            f"{sampling_figures['cached']['unsolved_dims']})")


def measure_sampling(spec: str, num_samples: int, naive_steps: int, out: dict, save) -> None:
    """Fills `out` with each sampler's figures, calling `save()` after each."""
    cfg = jaxar.load_config(str(ROOT / spec))
    model = jaxar.build_model(cfg)
    variables = jaxar.init_variables(model, cfg, jax.random.key(0))
    shape = (num_samples, *model.event_shape)
    size = int(np.prod(model.event_shape))
    labels = (jnp.arange(num_samples, dtype=jnp.int32) % model.num_classes
              if model.num_classes else None)
    cond = model.derive_cond(jnp.zeros(shape, jnp.int32))
    key, temperature = jax.random.key(1), jnp.float32(1.0)
    zeros, none_known = jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)
    args = (variables, key, labels, cond, temperature, zeros, none_known)
    out.update(config=spec, num_samples=num_samples, dimensions=size,
               event_shape=list(model.event_shape))
    c, s, cached = compile_and_run(_ancestral, (model, "cached"), args)
    out["cached"] = {"compile_s": c, "seconds": s, "samples_per_s": num_samples / s}
    log(f"  sampling cached: {s:.2f} s for {num_samples} (compile {c:.1f} s)")
    save()
    steps = min(naive_steps, size)
    later_known = jnp.broadcast_to(jnp.asarray(jaxar.ordering(model) >= steps), shape)
    c, s, naive = compile_and_run(_ancestral, (model, "naive"), (*args[:5], zeros, later_known))
    first_dims = np.broadcast_to(np.asarray(jaxar.ordering(model) < steps), shape)
    same = bool(np.array_equal(np.asarray(naive)[first_dims], np.asarray(cached)[first_dims]))
    out["naive"] = {"compile_s": c, "timed_steps": steps, "timed_seconds": s,
                    "seconds": s * size / steps, "extrapolated": steps < size,
                    "samples_per_s": num_samples / (s * size / steps),
                    "identical_to_cached_on_timed_steps": same}
    log(f"  sampling naive: {s * size / steps:.1f} s"
        + (f" (extrapolated from its first {steps} of {size} steps, {s:.2f} s)"
           if steps < size else "")
        + f", compile {c:.1f} s, identical to cached: {same}")
    save()
    c, s, (fp, passes) = compile_and_run(_fixed_point, (model,), args)
    out["fixed_point"] = {"compile_s": c, "seconds": s, "samples_per_s": num_samples / s,
                          "passes": int(passes),
                          "identical_to_cached": bool(np.array_equal(fp, cached)),
                          "identical_to_naive_on_timed_steps": bool(np.array_equal(
                              np.asarray(fp)[first_dims], np.asarray(naive)[first_dims])),
                          "unsolved_dims": unsolved_dims(model, args, fp),
                          **differences(model, fp, cached)}
    out["cached"]["unsolved_dims"] = unsolved_dims(model, args, cached)
    log(f"  sampling fixed_point: {s:.2f} s, {int(passes)} passes for {size} dimensions "
        f"(compile {c:.1f} s), {same_text(out)}")


# --- the run ----------------------------------------------------------------------------


def print_table(report: dict) -> None:
    dev = report["device"]
    log(f"\n{dev['kind']} ({dev['platform']}), jax {report['jax_version']}; peak TFLOP/s "
        f"{dev['peak_tflops']} ({dev['peak_source']}); memory/device "
        f"{dev['memory_bytes'] / 2**30:.1f} GiB ({dev['memory_source']})")
    head = (f"{'config':<20} {'dtype':<9} {'batch':>5} {'img/s':>9} {'step ms':>9} "
            f"{'compile s':>9} {'GFLOP/st':>9} {'GB acc':>8} {'TFLOP/s':>8} {'MFU':>7} "
            f"{'mem MiB':>9} {'max b/dev':>9}")
    log(head)
    for r in report["train"]:
        for dtype in DTYPES:
            row = r[dtype]
            mfu = f"{100 * row['mfu']:.2f}%" if row["mfu"] is not None else "n/a"
            log(f"{r['name']:<20} {dtype:<9} {row['batch']:>5} {row['images_per_s']:>9.2f} "
                f"{1e3 * row['step_s']:>9.1f} {row['compile_s']:>9.1f} "
                f"{row['model_flops_per_step'] / 1e9:>9.2f} "
                f"{row['bytes_accessed_per_step'] / 1e9:>8.2f} "
                f"{row['tflops_achieved']:>8.3f} {mfu:>7} "
                f"{row['peak_memory_bytes'] / 2**20:>9.1f} "
                f"{str(row.get('max_batch_per_device')):>9}")
    log(f"\n{'config':<20} conv_impl, float32 images/s (fastest marked *)")
    for r in report["train"]:
        ci = r["conv_impl"]
        if "impls" in ci:
            log(f"{r['name']:<20} " + "  ".join(
                f"{i}{'*' if i == ci['fastest'] else ''} {v['images_per_s']:.2f}"
                for i, v in ci["impls"].items()) + f"  (auto = {ci['auto_resolves_to']})")
    s = report.get("sampling")
    if s and "fixed_point" in s:
        log(f"\nsampling {s['config']}: {s['num_samples']} samples of {s['event_shape']}")
        log(f"  cached      {s['cached']['seconds']:9.2f} s")
        log(f"  fixed_point {s['fixed_point']['seconds']:9.2f} s  "
            f"{s['fixed_point']['passes']} passes / {s['dimensions']} dims, "
            f"{same_text(s)}")
        n = s["naive"]
        log(f"  naive       {n['seconds']:9.2f} s"
            + (f"  (extrapolated from {n['timed_steps']} steps)" if n["extrapolated"] else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="smoke configs: seconds on a CPU")
    mode.add_argument("--quick", action="store_true",
                      help="paper configs, few steps and samples: < 8 min on one GPU")
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--configs", help="comma-separated config[:variant] to run instead")
    parser.add_argument("--batch", type=int, help="per-device batch (default: the config's)")
    parser.add_argument("--steps", type=int, help="timed train steps per measurement")
    parser.add_argument("--samples", type=int, help="samples drawn at once")
    parser.add_argument("--naive_steps", type=int, help="naive steps timed, then extrapolated")
    parser.add_argument("--sampling_config", help="config to sample from")
    parser.add_argument("--no_sampling", action="store_true", help="skip the sampling figures")
    args = parser.parse_args(argv)
    header = run_header(__file__, argv, args.out)
    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    settings = dict(MODES[mode_name])
    on_cpu = jax.default_backend() == "cpu"
    if mode_name == "quick" and on_cpu:
        settings.update(steps=2, samples=2, naive_steps=8, matmul=2048)
    for k in ("steps", "samples", "naive_steps"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    started = now()
    report = {"mode": mode_name, **versions(), "settings": settings, "train": []}

    def save():
        report["wall_s"] = now() - started
        refresh_mfu(report, device)
        if args.out:
            write_json(args.out, report, header)

    device = Device(settings["matmul"])
    report["device"] = dev = device.info
    log(f"{dev['kind']} x{dev['count']} ({dev['platform']}), jax {jax.__version__}, "
        f"{mode_name} run; peak TFLOP/s {dev['peak_tflops']} ({dev['peak_source']})")
    save()
    if args.configs:
        plan = [(spec.rsplit("/", 1)[-1], spec, None, None) for spec in args.configs.split(",")]
    else:
        plan = TINY_CONFIGS if args.tiny else CONFIGS
    # Compiles for memory figures only run in threads on accelerator hosts (many cores,
    # the device does the timed work); on CPU they would steal the cores being timed.
    pool = (concurrent.futures.ThreadPoolExecutor(2) if not on_cpu and (os.cpu_count() or 1) >= 8
            else None)
    with common.rng_context():
        for name, spec, batch, quick_cpu in plan:
            batch = args.batch or (quick_cpu if mode_name == "quick" and on_cpu else batch)
            log(f"{name}: {spec}, per-device batch {batch or 'of the config'}")
            report["train"].append(
                measure_config(name, spec, batch, settings["steps"], device, pool))
            save()
        if not args.no_sampling:
            spec = args.sampling_config or SAMPLING["tiny" if args.tiny else "full"]
            log(f"sampling: {spec}")
            report["sampling"] = {}
            measure_sampling(spec, settings["samples"], settings["naive_steps"],
                             report["sampling"], save)
            save()
    if pool is not None:
        pool.shutdown()
    print_table(report)
    save()
    log(f"\nwall time {report['wall_s']:.1f} s" + (f"; figures in {args.out}" if args.out else ""))
    return report


if __name__ == "__main__":
    main()

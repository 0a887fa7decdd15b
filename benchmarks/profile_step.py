"""Where a jitted train or evaluation step's time goes: per-op time from a profiler trace, by
what the op does.

  python benchmarks/profile_step.py                       # PixelCNN++ and PixelSNAIL default
  python benchmarks/profile_step.py --configs experiments/pixelcnn_pp_cifar10.py:paper --batch 4
  python benchmarks/profile_step.py --out profile_step.json
  python benchmarks/profile_step.py --eval --configs experiments/pixelcnn_pp_cifar10.py:paper

For each config the trainer's own train step (`jaxar.training.train.Trainer.train_step`,
built as benchmarks/accelerator.py does: loss, gradient, clipping, Adam, EMA) is lowered
and compiled (both timed), run twice, then traced with `jax.profiler` for `--steps`
steps. Every executed op in the trace is an instruction of the compiled step; the HLO
text names its kind and its source: the jaxar (or optax) function whose line emitted it
(XLA's stack-frame table), and `transpose(` in its op_name when it belongs to the
gradient. Ops are grouped by that (see `GROUPS`): convolutions and matmuls by kind and
direction, everything else by the function that wrote it, e.g. weight normalization,
concat_elu, dropout's mask bits, the mixture likelihood, Adam, the EMA. Times are summed
over XLA:CPU's threads (they run ops in parallel), so a group's share is of the op time,
and the wall time of a step is printed beside it. An op XLA writes itself (e.g. a
gradient convolution it rewrote) may carry no source: it counts by its kind, forward.
XLA's `cost_analysis()` gives the step's FLOPs and bytes. `--out FILE` writes every figure
as JSON (benchmarks/common.py's header first).

`--eval` profiles the evaluation step instead: the forward pass and likelihood that
`jaxar-eval` and the trainer's evaluation run (`jaxar.training.train.jit_eval_step`, one
device, a batch of `--batch` images, default `eval.batch_size`), on the model's random
initial parameters (initialized on 2 images: the speed does not depend on the values).
Transposed convolutions (an XLA convolution with a dilated input) count apart.
"""

from __future__ import annotations

import argparse
import collections
import glob
import pathlib
import re
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402
from benchmarks.common import build, first, random_batch  # noqa: E402
from jaxar import settings  # noqa: E402
from jaxar.models import common  # noqa: E402
from jaxar.training import sharding, train  # noqa: E402

CONFIGS = ["experiments/pixelcnn_pp_cifar10.py:default",
           "experiments/pixelsnail_cifar10.py:default"]

# (group, function names): an op whose innermost jaxar/optax frame is one of these
# functions. Checked after the op kinds below (a convolution inside WNConv is a
# convolution, not weight normalization).
GROUPS = [
    ("dropout (mask bits)", ("dropout", "hash_bits", "_fmix32")),
    ("weight norm", ("wn_kernel", "wn_affine", "_data_dependent_affine")),
    ("concat_elu / elu", ("concat_elu", "elu")),
    ("mixture likelihood", ("DiscretizedLogisticMixture.", "_log1mexp", "grouped_log_prob")),
    ("attention (softmax, masks)", ("attention", "Attention", "causal")),
    ("shifts and pads", ("down_shift", "right_shift", "up_left_stream", "down_stream",
                         "shift", "pixel_inputs", "with_ones")),
    ("EMA", ("train_step.<locals>.<lambda>",)),
]
# HLO opcodes that make their own group (a fusion counts as the heaviest op it contains).
KINDS = {"convolution-transposed": "transposed convolution", "convolution": "convolution",
         "dot": "matmul", "gather": "gather / scatter",
         "scatter": "gather / scatter", "dynamic-slice": "gather / scatter",
         "dynamic-update-slice": "gather / scatter", "copy": "layout copies",
         "transpose": "layout copies"}
CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}


# --- the HLO text: each instruction's kind, direction and source function ------------


def _shape_end(text: str) -> int:
    """Index just past the result shape at the start of `text` (a tuple shape nests)."""
    if not text.startswith("("):
        return text.index(" ")
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return i + 1
    return len(text)


def parse_hlo(text: str) -> dict[str, dict]:
    """`{instruction name: {"opcode", "kinds" (opcodes inside a fusion), "grad", "function",
    "file"}}` for every instruction of an HLO module's text."""
    tables = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    computations: dict[str, set] = collections.defaultdict(set)
    instructions, table, computation = {}, None, None
    inst = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.*)$")
    for line in text.splitlines():
        if line in tables:
            table = line
            continue
        if table is not None:
            m = re.match(r"^(\d+) (.*)$", line)
            if m:
                tables[table][int(m.group(1))] = m.group(2)
                continue
            table = None
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            computation = header.group(1)
            continue
        m = inst.match(line)
        if not m:
            continue
        name, rest = m.groups()
        rest = rest[_shape_end(rest):].lstrip()
        opcode = rest[: rest.index("(")] if "(" in rest else rest
        # A convolution of a dilated input is a transposed one: a kind of its own.
        kinds = {opcode, "convolution-transposed"} if (
            opcode == "convolution" and "lhs_dilate=" in rest) else {opcode}
        computations[computation] |= kinds
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        op_name = re.search(r'op_name="([^"]*)"', rest)
        instructions[name] = {
            "opcode": opcode, "own_kinds": kinds, "calls": calls.group(1) if calls else None,
            "frame": int(frame.group(1)) if frame else None,
            "grad": bool(op_name and "transpose(" in op_name.group(1)),
        }
    for info in instructions.values():
        info["kinds"] = computations.get(info.pop("calls"), set()) | info.pop("own_kinds")
        info["function"], info["file"] = _source(tables, info.pop("frame"))
    return instructions


def _source(tables, frame_id) -> tuple[str, str]:
    """The function and file of a stack frame (its innermost location)."""
    frame = tables["StackFrames"].get(frame_id)
    if frame is None:
        return "", ""
    location = tables["FileLocations"].get(int(re.search(r"file_location_id=(\d+)", frame)[1]))
    if location is None:
        return "", ""
    file_id = int(re.search(r"file_name_id=(\d+)", location)[1])
    function_id = int(re.search(r"function_name_id=(\d+)", location)[1])
    return (tables["FunctionNames"].get(function_id, "").strip('"'),
            tables["FileNames"].get(file_id, "").strip('"'))


def group_of(info: dict) -> str:
    """The group an instruction's time is counted in (`KINDS`, then `GROUPS`)."""
    direction = " (gradient)" if info["grad"] else ""
    for opcode in ("convolution-transposed", "convolution", "dot", "gather", "scatter",
                   "dynamic-slice", "dynamic-update-slice"):
        if opcode in info["kinds"]:
            return KINDS[opcode] + direction
    if info["opcode"] in KINDS:
        return KINDS[info["opcode"]]
    function = info["function"]
    for group, names in GROUPS:
        if any(function == n or function.startswith(n) for n in names):
            return group + direction
    if "optax" in info["file"] or function.startswith("apply_updates"):
        return "optimizer (Adam, clipping)"
    return "other elementwise" + direction


# --- the trace ------------------------------------------------------------------------


def op_times(trace_dir: str, instructions: dict) -> collections.Counter:
    """Seconds per instruction name summed over every thread of the trace."""
    from jax._src.lib import _profile_data  # noqa: PLC0415 (jaxlib's own trace reader)

    totals = collections.Counter()
    for path in glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True):
        for plane in _profile_data.ProfileData.from_file(path).planes:
            for line in plane.lines:
                for event in line.events:
                    info = instructions.get(event.name)
                    if info is not None and info["opcode"] not in CONTAINERS:
                        totals[event.name] += event.duration_ns * 1e-9
    return totals


def eval_program(cfg, batch: int, impl: str | None):
    """(model, the evaluation step compiled on one device, a function running it once,
    lower seconds, compile seconds) for a random batch of `batch` images."""
    cfg = cfg.copy_and_resolve_references()
    if impl is not None:
        cfg.model.conv_impl = impl
    cfg.train.init_batch_size = 2
    model = jaxar.build_model(cfg)
    variables = jaxar.init_variables(model, cfg, jax.random.key(0))
    mesh = sharding.make_mesh(settings.MeshSettings(), jax.devices()[:1])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = train.jit_eval_step(model, cfg, mesh, replicated, replicated)
    host = random_batch(model, batch)
    device_batch = {"x": host["x"], "mask": np.ones(batch, np.float32),
                    "labels": host["labels"] if model.num_classes else np.zeros(batch, np.int32)}
    if model.cond_shape:
        device_batch["cond"] = host["cond"]
    args = (variables["params"], variables.get("batch_stats", {}), device_batch)
    start = time.perf_counter()
    lowered = step.lower(*args)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    return model, compiled, lambda: jax.block_until_ready(compiled(*args)), lower_s, compile_s


def profile(spec: str, batch: int | None, steps: int, impl: str | None,
            evaluate: bool = False) -> dict:
    cfg = jaxar.load_config(str(ROOT / spec))
    if evaluate:
        batch = batch or cfg.eval.batch_size
        model, compiled, run, lower_s, compile_s = eval_program(cfg, batch, impl)
        run()  # warm-up
        return _traced(spec, batch, model, compiled, lambda _: run(), None, steps, lower_s,
                       compile_s)
    if batch:
        cfg.train.batch_size = batch
    model, trainer = build(cfg, impl)
    host = {k: np.asarray(v) for k, v in random_batch(model, cfg.train.batch_size).items()
            if v is not None}
    with common.rng_context():
        device_batch = trainer.device_batch(host)
        start = time.perf_counter()
        lowered = trainer.train_step.lower(trainer.abstract_state, device_batch)
        lower_s = time.perf_counter() - start
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start - lower_s
        state = trainer.init_state(jax.random.PRNGKey(0), host)
        run = lambda state: jax.block_until_ready(compiled(state, device_batch))[0]
        for _ in range(2):  # warm-up
            state = run(state)
        return _traced(spec, cfg.train.batch_size, model, compiled, run, state, steps, lower_s,
                       compile_s)


def _traced(spec, batch, model, compiled, run, state, steps, lower_s, compile_s) -> dict:
    """Figures of `steps` traced calls of `state = run(state)`, grouped by `group_of`."""
    wall = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                start = time.perf_counter()
                state = run(state)
                wall.append(time.perf_counter() - start)
        instructions = parse_hlo(compiled.as_text())
        times = op_times(trace_dir, instructions)
    groups = collections.Counter()
    for name, seconds in times.items():
        groups[group_of(instructions[name])] += seconds / steps
    cost = first(compiled.cost_analysis())
    top = [(name, group_of(instructions[name]), instructions[name]["function"], s / steps)
           for name, s in times.most_common(8)]
    return {"config": spec, "batch": batch, "conv_impl": model.conv_impl,
            "lower_s": lower_s, "compile_s": compile_s, "step_s": float(np.median(wall)),
            "op_s": sum(groups.values()), "groups": dict(groups), "top_ops": top,
            "flops": float(cost.get("flops", np.nan)),
            "bytes": float(cost.get("bytes accessed", np.nan))}


def report(r: dict) -> None:
    print(f"\n{r['config']} (batch {r['batch']}, conv_impl {r['conv_impl']}): "
          f"step {r['step_s']:.3f} s wall, {r['op_s']:.3f} s of ops over all threads; "
          f"trace+lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s; "
          f"XLA: {r['flops'] / 1e9:.1f} GFLOP, {r['bytes'] / 1e9:.2f} GB per step")
    for group, seconds in sorted(r["groups"].items(), key=lambda kv: -kv[1]):
        print(f"  {group:36s} {seconds * 1e3:9.1f} ms  {100 * seconds / r['op_s']:5.1f}%")
    print("  heaviest ops:")
    for name, group, function, seconds in r["top_ops"]:
        print(f"    {name:30s} {group[:30]:30s} {function[:30]:30s} {seconds * 1e3:8.1f} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", help="comma-separated config[:variant] (default: "
                        + ", ".join(CONFIGS) + ")")
    parser.add_argument("--batch", type=int, help="batch size (default: the config's)")
    parser.add_argument("--steps", type=int, default=3, help="traced steps")
    parser.add_argument("--conv_impl", help="model.conv_impl (default: the config's)")
    parser.add_argument("--eval", action="store_true",
                        help="profile the evaluation step (forward and likelihood) instead")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)
    bench.log(bench.machine())
    results = []
    for spec in args.configs.split(",") if args.configs else CONFIGS:
        results.append(profile(spec, args.batch, args.steps, args.conv_impl, args.eval))
        report(results[-1])
        if args.out:
            bench.write_json(args.out, {"steps": args.steps, "eval": args.eval,
                                        "configs": results}, header)
    return results


if __name__ == "__main__":
    main()

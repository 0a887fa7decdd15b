"""Short training runs of the experiments with `jaxar-train`: test bits/dim, wall time, curves.

  launch/env.sh python benchmarks/train_results.py --out docs/data/train_results.json
  launch/env.sh python benchmarks/train_results.py --runs experiments/made_mnist.py=3000

Each run is `jaxar-train --config CONFIG --workdir DIR --config.train.num_steps=STEPS
--config.train.eval_every_steps=STEPS/--evals` in a fresh process, the command a user
types (the console script next to this interpreter), into a scratch folder (`--scratch`,
default a temporary one, removed afterwards) with a fresh compilation cache, so each run
compiles as a first run does. Everything else is the config's: data (the embedded MNIST
sample), batch, learning rate and its decay, EMA, checkpoints, and the samples drawn at
the last step. Per run the JSON holds the steps, the wall time of the whole command
(start-up, compilation, evaluations, checkpoints and samples included), the final test
bits/dim and nats per example from the run's last `eval/` line of `metrics.jsonl`, and
the eval and train curves (bits/dim against step), and the 1-minute load average at its
start and end. Runs go one after another; the JSON
is rewritten after each, so a run cut short keeps what it measured.

These are short CPU runs, not runs to convergence: the curves still fall at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

# CONFIG[:variant]=STEPS: short schedules, so that the whole set runs on a CPU (the JSON
# records each run's wall time).
RUNS = [
    "experiments/made_mnist.py=3000",
    "experiments/pixelcnn_mnist.py=1000",
    "experiments/gated_pixelcnn_mnist.py=500",
    "experiments/wavenet_mnist.py=800",
    "experiments/transformer_mnist.py=600",
    "experiments/pixelcnn_pp_cifar10.py:mnist=400",
    "experiments/pixelsnail_cifar10.py:mnist=300",
]


def parse_runs(text: str) -> list[tuple[str, int]]:
    """`CONFIG[:variant]=STEPS,...` as (config, steps) pairs."""
    runs = []
    for item in text.split(","):
        spec, equals, steps = item.rpartition("=")
        if not equals or not steps.isdigit() or int(steps) < 1 or not spec:
            raise ValueError(f"--runs: expected CONFIG[:variant]=STEPS, got {item!r}")
        if not (ROOT / spec.split(":")[0]).is_file():
            raise ValueError(f"--runs: no config file {spec.split(':')[0]!r}")
        runs.append((spec, int(steps)))
    return runs


def train_command() -> list[str]:
    """`jaxar-train` as installed beside this interpreter, else its module."""
    script = pathlib.Path(sys.executable).parent / "jaxar-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jaxar.cli.train"]


def read_metrics(workdir: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """The eval and train lines of a run's metrics.jsonl."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    evals = [m for m in lines if any(k.startswith("eval/") for k in m)]
    trains = [m for m in lines if any(k.startswith("train/") for k in m)]
    return evals, trains


def train_one(spec: str, steps: int, evals: int, scratch: pathlib.Path, index: int) -> dict:
    """Trains one config in a fresh workdir; its figures."""
    workdir = scratch / f"run{index}"
    eval_every = max(1, steps // evals)
    args = [f"--config={spec}", f"--workdir={workdir}", f"--config.train.num_steps={steps}",
            f"--config.train.eval_every_steps={eval_every}"]
    env = {**os.environ, "JAXAR_COMPILATION_CACHE": str(scratch / f"cache{index}")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would take precedence over the above
    load_start = os.getloadavg()[0]  # the wall time says little without the machine's load
    seconds, proc = common.timed(lambda: subprocess.run(
        train_command() + args, env=env, cwd=ROOT, capture_output=True, text=True))
    if proc.returncode:
        raise SystemExit(f"jaxar-train {' '.join(args)} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    eval_lines, train_lines = read_metrics(workdir)
    final = eval_lines[-1]
    if final["step"] != steps:
        raise SystemExit(f"{spec}: the last evaluation is at step {final['step']}, not {steps}")
    config = json.loads((workdir / "config.json").read_text())
    metric = "eval/bpd"  # a likelihood model's (Model.summarize); a VQ-VAE has none
    if metric not in final:
        raise SystemExit(f"{spec}: its evaluation has no {metric} (not a likelihood model)")
    return {
        "config": spec, "command": "jaxar-train " + " ".join(args[:1] + args[2:]),
        "model": config["model"]["name"], "data": config["data"]["name"],
        "shape": config["data"]["shape"], "num_levels": config["data"]["num_levels"],
        "batch_size": config["train"]["batch_size"], "steps": steps,
        "wall_s": seconds, "load_1min": [load_start, os.getloadavg()[0]],
        "test_bpd": final[metric],
        "test_nats": final.get("eval/nll_nats"),
        "eval_curve": [[m["step"], m[metric]] for m in eval_lines],
        "train_curve": [[m["step"], m["train/bpd"]] for m in train_lines if "train/bpd" in m],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="comma-separated CONFIG[:variant]=STEPS")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per run")
    parser.add_argument("--scratch", help="folder for the workdirs (default: a temporary one)")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    header = common.run_header(__file__, argv, args.out)
    if args.evals < 1:
        raise ValueError(f"--evals must be >= 1, got {args.evals}")
    runs = parse_runs(args.runs)
    common.log(common.machine())
    report = {"runs": []}
    scratch = pathlib.Path(args.scratch or tempfile.mkdtemp(prefix="jaxar_train_results_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        for index, (spec, steps) in enumerate(runs):
            row = train_one(spec, steps, args.evals, scratch, index)
            report["runs"].append(row)
            common.log(f"{spec}: {steps} steps in {row['wall_s']:.0f} s, test "
                       f"{row['test_bpd']:.4f} bits/dim, {row['test_nats']:.1f} nats")
            if args.out:
                common.write_json(args.out, report, header)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()

"""Trains an experiment config in a workdir: the `jaxar-train` command.

  jaxar-train --config experiments/pixelcnn_mnist.py --workdir runs/pixelcnn_mnist
  jaxar-train --config experiments/pixelcnn_pp_cifar10.py:smoke --workdir runs/pp_smoke
  jaxar-train --config experiments/pixelcnn_mnist.py --workdir runs/x --config.train.num_steps=500

Also `python -m jaxar.cli.train` with the same flags; `--config.KEY=VALUE` overrides any
key of the config.

Re-running the same command resumes from the workdir's latest checkpoint (a changed
batch size or data section is refused; `--start_over` trains from step 0 instead, the
workdir's checkpoints moved aside to checkpoints/previous-<step>).

SIGTERM or SIGINT (Ctrl-C) stops the run after the step in flight with a checkpoint of
that step and one line on stderr; exit code 143 (SIGTERM) or 130 (SIGINT). A second
signal stops at once without saving (the checkpoints on disk stay whole). Exit code 2:
bad input; 1: a run that failed (a write, a read, a diverged loss).

Compiled programs are cached on disk (`jaxar.compilation_cache`: JAXAR_COMPILATION_CACHE
moves the cache or switches it off), so a resumed run starts without compiling again.

Several processes (hosts) train together when started with the same command:
on a Cloud TPU VM and in a multi-task SLURM step this is detected
(`--distributed=auto`); elsewhere give every process `--coordinator_address`
(host:port of process 0), `--num_processes` and its `--process_id`. The
workdir must then be one directory all processes share.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxar import cli, compilation_cache
from jaxar.config import load_config
from jaxar.training import checkpoint, preemption, sharding, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/file.py[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    # 'auto' calls jax.distributed.initialize() on a Cloud TPU VM or in a SLURM step of
    # several tasks; 'on' always (JAX reads the cluster from the environment); 'off' never.
    "Multi-process start-up: auto (Cloud TPU VM, SLURM step of several tasks), on, off; "
    "ignored when --coordinator_address is given.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for an explicit multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (explicit).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit).")
_START_OVER = flags.DEFINE_bool(
    "start_over", False,
    # A workdir of this or of another config or data: its checkpoints are moved aside to
    # checkpoints/previous-<step> first.
    "Train from step 0 in a workdir that holds a run, moving its checkpoints aside.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message) -> None:
    """Bad input: one line on stderr and exit code 2 (as argparse does), no traceback."""
    print(f"jaxar.cli.train: error: {message}", file=sys.stderr)
    sys.exit(2)


def _check_config_file(argv) -> None:
    """Loads the `--config` file once with `jaxar.load_config` before absl does: what is
    wrong with the file (a syntax error, no get_config, a get_config that raises or
    returns no ConfigDict) is then one line naming it, where absl would show a traceback."""
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    for k, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name in ("--config", "-config"):
            spec = value if equals else (args[k + 1] if k + 1 < len(args) else None)
            if spec:
                try:
                    load_config(spec)
                except ValueError as err:
                    _fail(f"--config: {err}")


def _help() -> str:
    """`--help`: this module's flags, one line each, and the docstring's examples (absl's
    own help lists the flags of the console script's wrapper module, which has none)."""
    lines = ["usage: jaxar-train --config FILE.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]"
             " [flags]", "", __doc__.strip().split("\n")[0], "", "flags:"]
    for flag in sorted(flags.FLAGS.get_flags_for_module(sys.modules[__name__]),
                       key=lambda f: f.name):
        lines.append(f"  --{flag.name:<22}{' '.join(flag.help.split())}")
    lines.append(f"  --{'config.KEY=VALUE':<22}override any key of the config, e.g. "
                 "--config.train.num_steps=2000")
    lines += ["", cli.examples(__doc__), "", "--helpfull lists absl's own flags too."]
    return "\n".join(lines)


def _parse_flags(argv):
    """absl flag parsing, which also loads the config file and applies its overrides."""
    if any(arg in ("-h", "--help", "-help", "--helpshort") for arg in argv[1:]):
        print(_help())
        sys.exit(0)
    _check_config_file(argv)
    try:
        argv = flags.FLAGS(argv)
    except flags.Error as err:  # its message may embed the config file's traceback
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        _fail(lines[0] if len(lines) < 3 else f"{lines[0]} {lines[-1]}")
    except (KeyError, AttributeError) as err:  # an override of a key the config lacks
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        # ml_collections' message is a repr with an escaped newline: one plain line.
        detail = str(err.args[0] if err.args else err).replace("\\n", " ").replace("\\'", "")
        detail = " ".join(detail.strip("'\"").split())
        _fail(f"unknown config key among the overrides {overrides}: {detail}")
    try:  # ml_collections reports a config file it could not load on first access
        _CONFIG.value.get("model")
    except (OSError, ValueError, KeyError, AttributeError) as err:
        while err.__cause__ is not None:
            err = err.__cause__
        _fail("--config: " + " ".join(str(err).split()))
    return argv


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    checkpoint.quiet_orbax_errors()
    compilation_cache.enable()
    preemption.exit_on_second_signal()
    try:  # first, before anything starts a JAX backend
        sharding.initialize_distributed(
            _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as err:
        _fail(err)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, start_over=_START_OVER.value)
    except train.BadInput as err:  # a bad config value, dataset or workdir, named in it
        _fail(err)
    except train.RunFailed as err:  # a failed write or read, or a diverged loss
        _exit(f"jaxar.cli.train: error: {err}", 1)
    except train.Preempted as err:  # saved: one line, 128 + the signal's number
        sharding.leave_distributed()  # every process stopped at the same step
        _exit(f"jaxar.cli.train: {err}", err.exit_code)
    except KeyboardInterrupt:  # a second signal: nothing saved, nothing damaged
        _exit("jaxar.cli.train: interrupted: stopped without saving; a re-run resumes "
              "from the last checkpoint on disk", 130)


def _exit(line: str, code: int) -> None:
    """One line on stderr, then the process ends: everything was closed; should a
    library thread still wait (orbax waits minutes for signals of a failed save), it
    must not keep the process alive."""
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    """The `jaxar-train` console script."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()

"""Command line evaluation of a training (or imported) run: bits/dim on a dataset split.

  jaxar-eval --workdir runs/pixelcnn_pp_cifar10
  jaxar-eval --workdir runs/pixelcnn_mnist --split train --step 2000 --out train.json
  jaxar-eval --workdir runs/pixelcnn_pp_cifar10 --config.data.name=svhn_cropped \
      --scores svhn_scores.jsonl

Scores the run's EMA parameters (`--params raw`: the optimizer's) on every example of
the split (default: test) once, batched and split over all devices, with a progress bar
on stderr; prints one line (examples, bits/dim, nats per example, images/s) and writes
it as JSON (`--out`, default `<workdir>/eval_<split>_<step>.json`); `--scores` writes
one JSON line per example (index, label, nats, bits_per_dim), e.g. for
out-of-distribution scoring.
`--config.data.<key>=value` and `--config.eval.<key>=value` override the run's config
the way `jaxar-train` takes overrides (another dataset, source, cap or batch size).

Run as `python -m jaxar.cli.evaluate`; in Python use `jaxar.evaluate(...)`.
Bad input ends with one line on stderr and exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys

from absl import flags
from ml_collections import ConfigDict, config_flags

from jaxar import cli, compilation_cache, settings
from jaxar.training import evaluate, sharding


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser("jaxar-eval", __doc__)
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument("--split", default="test", help=f"one of {evaluate.SPLITS}")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None,
                   help="summary JSON (default: <workdir>/eval_<split>_<step>.json)")
    p.add_argument("--scores", default=None, help="per-example scores, a .jsonl file")
    p.add_argument("--params", default="ema", choices=("ema", "raw"),
                   help="the Polyak average (as sampling uses) or the optimizer's parameters")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", default="auto", choices=("auto", "on", "off"),
                   help="join a multi-process JAX system: 'auto' on a Cloud TPU VM or in a "
                        "SLURM step of several tasks (as jaxar-train)")
    return p


def parse_overrides(args: list[str]) -> dict:
    """`--config.data.x=v` / `--config.eval.x=v` arguments -> {"data.x": v}, each value
    parsed by ml_collections as `jaxar-train` parses it, typed by the base config's key."""
    unknown = [a for a in args if a.startswith("-") and not a.startswith("--config.")]
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    if not args:
        return {}
    schema = settings.base_config()
    argv = ["jaxar-eval", *args]
    values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(
            "config", ConfigDict({s: schema[s] for s in evaluate.OVERRIDABLE}),
            flag_values=values, sys_argv=argv)
        rest = values(argv)
    except flags.Error as err:
        raise ValueError(" ".join(str(err).split())) from None
    except (KeyError, AttributeError) as err:  # a key the data and eval sections lack
        detail = str(err.args[0] if err.args else err).replace("\\n", " ").replace("\\'", "")
        raise ValueError(
            f"unknown config key among the overrides {[a.split('=')[0] for a in args]}: "
            f"{' '.join(detail.strip(chr(34) + chr(39)).split())} (jaxar-eval overrides "
            f"data.* and eval.* only)") from None
    if len(rest) > 1:
        raise ValueError(f"unrecognized arguments: {' '.join(rest[1:])}")
    return config_flags.get_override_values(values["config"])


def run(args, overrides: dict) -> str:
    result = evaluate.evaluate(args.workdir, args.split, step=args.step, overrides=overrides,
                               out=args.out, scores=args.scores,
                               progress=not args.no_progress, params=args.params)
    s = result.summary
    wrote = " and ".join(map(str, result.written))
    return (f"{s['dataset']} step {s['step']}: {s['examples']} examples, "
            f"{s['bits_per_dim']:.4f} bits/dim, {s['nats_per_example']:.2f} nats/example, "
            f"{s['images_per_sec']:.1f} images/s; wrote {wrote}")


def main(argv=None) -> int:
    """The `jaxar-eval` console script."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)

    def work() -> str:
        overrides = parse_overrides(rest)
        sharding.initialize_distributed(args.distributed)  # before anything starts JAX
        compilation_cache.enable()  # a repeated evaluation loads its program from disk
        return run(args, overrides)

    return cli.run(parser, work)

if __name__ == "__main__":
    sys.exit(main())

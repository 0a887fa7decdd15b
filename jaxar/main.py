"""Command line: flags only, then `train_and_evaluate`.

  python -m jaxar.main --config experiments/pixelcnn_mnist.py[:variant] --workdir runs/x \
      [--config.train.num_steps=2000 ...]

Re-running the same command resumes from the workdir's latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from jaxar import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/file.py[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

r"""Decoder-only pixel Transformer on binarized MNIST.

Variants (`--config experiments/transformer_mnist.py:VARIANT`):
  default  2 pre-LayerNorm blocks of width 32 (2 heads), learned (row, column, channel)
           position encodings, raster order, on the embedded 5k MNIST sample. Full
           attention over 784 pixels is what costs on a CPU, so heads and batch are
           small: 1500 steps of 8 run in minutes (docs/results.md). Other
           orderings: --config.model.ordering=zigzag (or random, with
           --config.model.ordering_seed).
           jaxar-train --config experiments/transformer_mnist.py \
               --workdir runs/transformer_mnist
  smoke    seconds, for tests.
  paper    Image-Transformer-sized (Parmar et al., 2018: width 512, 8 heads, dropout
           0.1) with full attention over the 784 pixels: 8 blocks, on TFDS
           `binarized_mnist`. The reference implementation of docs/results.md reports
           0.1486 test bits/dim for its (smaller) Transformer on MNIST thresholded at
           0.5. For accelerators; needs prepared TFDS data (docs/guides/data.md).
           jaxar-train --config experiments/transformer_mnist.py:paper \
               --workdir runs/transformer_paper
"""

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.model.name = "transformer"
    cfg.model.likelihood = "bernoulli"
    cfg.model.features = 32
    cfg.model.num_heads = 2
    cfg.model.num_layers = 2
    cfg.model.mlp_ratio = 4
    cfg.model.dropout_rate = 0.0
    cfg.model.position = "learned"  # or "sinusoidal"
    cfg.model.ordering = "raster"  # or "zigzag", "random"
    cfg.model.ordering_seed = 0  # the permutation of ordering="random"
    cfg.train.num_steps = 1500
    cfg.train.batch_size = 8
    cfg.train.learning_rate = 1e-3
    cfg.train.lr_decay = 0.9995
    cfg.train.eval_every_steps = 500
    cfg.train.checkpoint_every_steps = 500
    cfg.train.sample_every_steps = 1500
    cfg.eval.batch_size = 100
    return cfg


def _smoke():
    cfg = _default()
    cfg.data.source = "synthetic"
    cfg.data.name = "stripes"
    cfg.data.shape = (6, 6, 1)
    cfg.data.num_train = 64
    cfg.data.num_test = 32
    cfg.model.features = 8
    cfg.model.num_heads = 2
    cfg.model.num_layers = 1
    return base.smoke_training(cfg)


def _paper():
    cfg = _default()
    cfg.data.source = "tfds"
    cfg.data.name = "binarized_mnist"
    cfg.model.num_classes = 0  # binarized_mnist has no labels
    cfg.model.features = 512
    cfg.model.num_heads = 8
    cfg.model.num_layers = 8
    cfg.model.dropout_rate = 0.1
    cfg.train.batch_size = 64
    cfg.train.num_steps = 200_000
    cfg.train.learning_rate = 3e-4
    cfg.train.lr_decay = 0.99999
    cfg.train.eval_every_steps = 5000
    cfg.train.checkpoint_every_steps = 2000
    cfg.train.sample_every_steps = 20_000
    return cfg


def get_config(arg=None):
    return base.pick_variant(
        arg, {"default": _default, "smoke": _smoke, "paper": _paper}, "default"
    )

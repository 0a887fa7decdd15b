r"""WaveNet on binarized MNIST read as a 784-long sequence (raster order).

Variants (`--config experiments/wavenet_mnist.py:VARIANT`):
  default      one stack of dilations 1..512 (receptive field 1025 > 784: every pixel
               sees the whole prefix), 32 residual channels, on the embedded 5k MNIST
               sample; 2000 steps of 16 run in minutes on a CPU (docs/results.md).
               jaxar-train --config experiments/wavenet_mnist.py \
                   --workdir runs/wavenet_mnist
  conditional  the same, conditioned globally on the digit and locally on the 28 row
               means (`model.cond_shape = (28, 1)`, a down-sampled copy of the image):
               p(image | digit, row means).
  smoke        seconds, for tests.
  tfds         the default network on TFDS `mnist` (60k images) thresholded at 0.5 as in
               the reference setup (whose WaveNet reports 0.1240 test bits/dim), 20
               epochs of batch 128. Needs prepared TFDS data (docs/guides/data.md).
Sample grids show the sequences as 28x28 images (`data.image_shape`).
"""

from ml_collections import config_dict

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.data.shape = (784,)
    cfg.data.image_shape = (28, 28, 1)  # how sample grids show a sequence
    cfg.model.name = "wavenet"
    cfg.model.likelihood = "bernoulli"
    cfg.model.residual_channels = 32
    cfg.model.gate_channels = 32
    cfg.model.skip_channels = 64
    cfg.model.head_channels = 64
    cfg.model.num_stacks = 1
    cfg.model.layers_per_stack = 10
    # (frames, depth) of local features; None: no local conditioning.
    cfg.model.cond_shape = config_dict.placeholder(tuple)
    cfg.model.cond_features = 16
    cfg.train.num_steps = 2000
    cfg.train.batch_size = 16
    cfg.train.learning_rate = 2e-3
    cfg.train.lr_decay = 0.9995
    cfg.train.eval_every_steps = 500
    cfg.train.checkpoint_every_steps = 500
    cfg.train.sample_every_steps = 2000
    return cfg


def _conditional():
    cfg = _default()
    cfg.model.num_classes = 10
    cfg.model.cond_shape = (28, 1)
    return cfg


def _smoke():
    cfg = _default()
    cfg.data.source = "synthetic"
    cfg.data.name = "stripes"
    cfg.data.shape = (36,)  # flattened 6x6 stripes
    cfg.data.image_shape = (6, 6, 1)
    cfg.data.num_classes = 0  # > 0: labels, whose parity sets the stripes' orientation
    cfg.data.num_train = 64
    cfg.data.num_test = 32
    cfg.model.residual_channels = 4
    cfg.model.gate_channels = 4
    cfg.model.skip_channels = 8
    cfg.model.head_channels = 8
    cfg.model.layers_per_stack = 3
    return base.smoke_training(cfg)


def _tfds():
    cfg = _default()
    cfg.data.source = "tfds"
    cfg.data.name = "mnist"
    cfg.train.batch_size = 128
    cfg.train.num_steps = 20 * (60000 // 128)
    cfg.train.lr_decay = 0.9999
    cfg.train.eval_every_steps = 60000 // 128
    cfg.train.checkpoint_every_steps = 60000 // 128
    cfg.train.sample_every_steps = 5 * (60000 // 128)
    return cfg


def get_config(arg=None):
    return base.pick_variant(
        arg,
        {"default": _default, "conditional": _conditional, "smoke": _smoke, "tfds": _tfds},
        "default",
    )

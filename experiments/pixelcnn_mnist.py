"""PixelCNN on binarized MNIST.

Variants (`--config experiments/pixelcnn_mnist.py:VARIANT`):
  default  residual PixelCNN on the embedded 5k MNIST sample; minutes on a CPU.
           jaxar-train --config experiments/pixelcnn_mnist.py --workdir runs/pixelcnn_mnist
  smoke    seconds, for tests.
  seed     a small reference setup's network and training: mask-A 7x7 conv 1->64, three
           mask-B 7x7 64->64, mask-B 7x7 64->1, ReLU, Bernoulli, Adam lr 2e-4, batch 128,
           21 epochs of TFDS MNIST thresholded at 0.5. The reference implementation
           reports 0.1177 test bits/dim (docs/results.md).
  paper    van den Oord et al. (2016): 15 residual blocks of h=64 (2h=128 features),
           3x3 masked convs, Bernoulli, on TFDS `binarized_mnist`; published NLL 81.30
           nats (eval/nll_nats). Needs prepared TFDS data (docs/guides/data.md).
           jaxar-train --config experiments/pixelcnn_mnist.py:paper \
               --workdir runs/pixelcnn_paper
"""

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.model.name = "pixelcnn"
    cfg.model.likelihood = "bernoulli"
    cfg.model.architecture = "residual"
    cfg.model.features = 16
    cfg.model.num_layers = 5
    cfg.model.kernel_size = 3
    cfg.model.input_kernel_size = 7
    cfg.model.dilations = (1, 2, 1, 3, 1)
    cfg.model.head_features = 32
    cfg.model.norm = "none"
    cfg.train.num_steps = 2000
    cfg.train.batch_size = 32
    cfg.train.learning_rate = 2e-3
    cfg.train.lr_decay = 0.9995
    cfg.train.eval_every_steps = 500
    cfg.train.sample_every_steps = 2000
    cfg.train.checkpoint_every_steps = 500
    return cfg


def _smoke():
    cfg = base.smoke(_default())
    cfg.model.features = 4
    cfg.model.num_layers = 2
    cfg.model.head_features = 8
    cfg.model.input_kernel_size = 3
    return cfg


def _seed():
    cfg = base.thresholded_mnist_training(base.get_base_config(), epochs=21, learning_rate=2e-4)
    cfg.model.name = "pixelcnn"
    cfg.model.likelihood = "bernoulli"
    cfg.model.architecture = "plain"
    cfg.model.features = 64
    cfg.model.num_layers = 3
    cfg.model.input_kernel_size = 7
    return cfg


def _paper():
    cfg = base.get_base_config()
    cfg.data.source = "tfds"
    cfg.data.name = "binarized_mnist"
    cfg.model.name = "pixelcnn"
    cfg.model.likelihood = "bernoulli"
    cfg.model.architecture = "residual"
    cfg.model.features = 64
    cfg.model.num_layers = 15
    cfg.model.kernel_size = 3
    cfg.model.dilations = (1,) * 15
    cfg.model.head_features = 64
    cfg.train.batch_size = 64
    cfg.train.num_steps = 200_000
    cfg.train.learning_rate = 5e-4
    cfg.train.lr_decay = 0.99999
    cfg.train.eval_every_steps = 5000
    cfg.train.checkpoint_every_steps = 2000
    cfg.train.sample_every_steps = 20000
    return cfg


def get_config(arg=None):
    return base.pick_variant(
        arg, {"default": _default, "smoke": _smoke, "seed": _seed, "paper": _paper}, "default"
    )

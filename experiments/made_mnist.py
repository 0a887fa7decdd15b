"""MADE on binarized MNIST.

Variants (`--config experiments/made_mnist.py:VARIANT`):
  default  2 x 512 hidden units, order-agnostic training over 8 random orderings with
           connectivity resampled per step, test-time ensemble of the 8; embedded 5k MNIST.
           jaxar-train --config experiments/made_mnist.py --workdir runs/made_mnist
  smoke    seconds, for tests.
  seed     a small reference setup's MADE: 3 x 512 hidden, one natural-order mask, Adam
           lr 1e-2, batch 128, 20 epochs of TFDS MNIST thresholded at 0.5; the reference
           implementation reports 0.2096 test bits/dim (docs/results.md).
  paper    Germain et al. (2015): 2 x 8000 hidden units, 32 masks (orderings and
           connectivity) trained agnostically, ensembled at test time, on TFDS
           `binarized_mnist`; published 86.64 nats (single mask 1 x 500: 88.40).
           jaxar-train --config experiments/made_mnist.py:paper --workdir runs/made_paper
"""

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.model.name = "made"
    cfg.model.likelihood = "bernoulli"
    cfg.model.hidden = (512, 512)
    cfg.model.ordering = "random"
    cfg.model.num_masks = 8
    cfg.model.mask_seed = 0
    cfg.eval.ensemble_masks = 8
    cfg.train.num_steps = 3000
    cfg.train.batch_size = 64
    cfg.train.learning_rate = 1e-3
    cfg.train.eval_every_steps = 1000
    cfg.train.checkpoint_every_steps = 1000
    cfg.train.sample_every_steps = 3000
    return cfg


def _smoke():
    cfg = base.smoke(_default(), shape=(6, 6, 1))
    cfg.model.hidden = (32,)
    cfg.model.num_masks = 2
    cfg.eval.ensemble_masks = 2
    return cfg


def _seed():
    cfg = base.thresholded_mnist_training(base.get_base_config(), epochs=20, learning_rate=1e-2)
    cfg.model.name = "made"
    cfg.model.likelihood = "bernoulli"
    cfg.model.hidden = (512, 512, 512)
    cfg.model.ordering = "raster"
    cfg.model.num_masks = 1
    return cfg


def _paper():
    cfg = base.get_base_config()
    cfg.data.source = "tfds"
    cfg.data.name = "binarized_mnist"
    cfg.model.name = "made"
    cfg.model.likelihood = "bernoulli"
    cfg.model.hidden = (8000, 8000)
    cfg.model.ordering = "random"
    cfg.model.num_masks = 32
    cfg.eval.ensemble_masks = 32
    cfg.train.batch_size = 100
    cfg.train.num_steps = 100_000
    cfg.train.learning_rate = 1e-4
    cfg.train.eval_every_steps = 5000
    cfg.train.checkpoint_every_steps = 2000
    cfg.train.sample_every_steps = 20000
    return cfg


def get_config(arg=None):
    return base.pick_variant(
        arg, {"default": _default, "smoke": _smoke, "seed": _seed, "paper": _paper}, "default"
    )

"""A two-level VQ-VAE (VQ-VAE-2 style) on the embedded 5k MNIST sample: the first stage
of the latent-prior pipeline (docs/guides/latent.md).

28x28 grey images at 8 bits are encoded into a 7x7 top and a 14x14 bottom map of codes
from one codebook each (EMA updates, decay 0.99, commitment cost 0.25, dead codes
restarted from the batch); metrics: reconstruction MSE and PSNR, codebook perplexity
and the fraction of codes used, per level; samples_<step>.png shows test images above
their reconstructions.

Variants (`--config experiments/vqvae_mnist.py:VARIANT`):
  default  minutes on a CPU.
           jaxar-train --config experiments/vqvae_mnist.py --workdir runs/vqvae_mnist
  smoke    seconds: 64 training images, a tiny network, 6 steps (for tests).
Then train the priors on its codes (experiments/latent_prior_mnist.py).
"""

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.model.name = "vqvae"
    cfg.model.features = 64
    cfg.model.residual_features = 32
    cfg.model.num_residual_layers = 2
    cfg.model.code_features = 32
    cfg.model.num_codes = 64
    cfg.model.bottom_factor = 2  # 14x14 bottom codes
    cfg.model.top_factor = 4  # 7x7 top codes
    cfg.model.decay = 0.99
    cfg.model.commitment_cost = 0.25
    cfg.data.source = "embedded"
    cfg.data.name = "mnist"
    cfg.data.shape = (28, 28, 1)
    cfg.data.num_levels = 256
    cfg.train.update(
        num_steps=1500, batch_size=32, learning_rate=1e-3, grad_clip=0.0, ema_decay=0.0,
        log_every_steps=50, eval_every_steps=500, checkpoint_every_steps=500,
        sample_every_steps=1500, num_samples=16,
    )
    return cfg


def _smoke():
    cfg = _default()
    cfg.model.features = 8
    cfg.model.residual_features = 4
    cfg.model.num_residual_layers = 1
    cfg.model.code_features = 4
    cfg.model.num_codes = 8
    cfg.data.num_train = 64
    cfg.data.num_test = 32
    return base.smoke_training(cfg)


def get_config(arg=None):
    return base.pick_variant(arg, {"default": _default, "smoke": _smoke}, "default")

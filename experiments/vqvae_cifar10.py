"""A two-level VQ-VAE on CIFAR-10 at VQ-VAE-2's sizes (Razavi et al., 2019), for
accelerators: 128 features, residual stacks of 2 layers with 64 features, two codebooks
of 512 codes of dimension 64 (EMA decay 0.99, commitment cost 0.25), a 16x16 bottom and
an 8x8 top code map for 32x32x3 images, batch 128, Adam at 3e-4.

Variants (`--config experiments/vqvae_cifar10.py:VARIANT`):
  default  TFDS cifar10 (prepared ArrayRecord, docs/guides/data.md), or an image folder with
           --config.data.source=folder --config.data.path=PATH/TO/IMAGES.
           jaxar-train --config experiments/vqvae_cifar10.py --workdir runs/vqvae_cifar10
  smoke    seconds: 8x8x3 synthetic stripes and a tiny network (for tests).
Then the priors: experiments/latent_prior_cifar10.py.
"""

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.model.name = "vqvae"
    cfg.model.features = 128
    cfg.model.residual_features = 64
    cfg.model.num_residual_layers = 2
    cfg.model.code_features = 64
    cfg.model.num_codes = 512
    cfg.model.bottom_factor = 2  # 16x16 bottom codes
    cfg.model.top_factor = 4  # 8x8 top codes
    cfg.data.source = "tfds"
    cfg.data.name = "cifar10"
    cfg.data.shape = (32, 32, 3)
    cfg.data.num_levels = 256
    cfg.train.update(
        num_steps=100_000, batch_size=128, learning_rate=3e-4, grad_clip=0.0, ema_decay=0.0,
        log_every_steps=100, eval_every_steps=5_000, checkpoint_every_steps=5_000,
        sample_every_steps=10_000, num_samples=16,
    )
    cfg.eval.batch_size = 500
    return cfg


def _smoke():
    cfg = base.smoke(_default(), (8, 8, 3))
    cfg.model.features = 8
    cfg.model.residual_features = 4
    cfg.model.num_residual_layers = 1
    cfg.model.code_features = 4
    cfg.model.num_codes = 8
    return cfg


def get_config(arg=None):
    return base.pick_variant(arg, {"default": _default, "smoke": _smoke}, "default")

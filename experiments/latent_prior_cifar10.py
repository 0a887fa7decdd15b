"""PixelSNAIL priors over the codes of experiments/vqvae_cifar10.py, at sizes for
accelerators (VQ-VAE-2 style; Razavi et al., 2019): `data.path` names the VQ-VAE's
workdir (default runs/vqvae_cifar10).

Variants (`--config experiments/latent_prior_cifar10.py:VARIANT`):
  top      PixelSNAIL over the 8x8 top codes: categorical over 512 codes (a 64-dim
           learned embedding), 256 features, 4 blocks of 4 gated resnets each followed
           by 4-head causal attention, dropout 0.1, class-conditional; batch 128.
           jaxar-train --config experiments/latent_prior_cifar10.py:top \
               --workdir runs/cifar_prior_top
  bottom   the same network over the 16x16 bottom codes, conditioned on the top codes of
           the same image (embedded, upsampled to 16x16, into every gated resnet).
           jaxar-train --config experiments/latent_prior_cifar10.py:bottom \
               --workdir runs/cifar_prior_bottom
Then: jaxar-sample --workdir runs/cifar_prior_bottom --top runs/cifar_prior_top \
    --num 64 --labels all --out cifar_latent.png
"""

from experiments import base

NUM_CODES = 512  # experiments/vqvae_cifar10.py's codebook


def _prior(level: str, shape):
    cfg = base.get_base_config()
    cfg.data.source = "codes"
    cfg.data.name = f"vqvae_cifar10_{level}"
    cfg.data.path = "runs/vqvae_cifar10"
    cfg.data.level = level
    cfg.data.shape = shape
    cfg.data.num_levels = NUM_CODES
    cfg.model.name = "pixelsnail"
    cfg.model.likelihood = "categorical"
    cfg.model.num_classes = 10
    cfg.model.embedding_features = 64
    cfg.model.features = 256
    cfg.model.num_blocks = 4
    cfg.model.num_resnets = 4
    cfg.model.key_features = 32
    cfg.model.value_features = 128
    cfg.model.num_heads = 4
    cfg.model.dropout_rate = 0.1
    cfg.model.nonlinearity = "elu"
    cfg.train.update(
        num_steps=200_000, batch_size=128, learning_rate=3e-4, lr_decay=0.999995,
        grad_clip=1.0, ema_decay=0.9995, log_every_steps=100, eval_every_steps=5_000,
        checkpoint_every_steps=5_000, sample_every_steps=20_000, num_samples=16,
    )
    cfg.eval.batch_size = 500
    return cfg


def _top():
    return _prior("top", (8, 8, 1))


def _bottom():
    cfg = _prior("bottom", (16, 16, 1))
    cfg.model.cond_shape = (8, 8, 1)
    cfg.model.cond_levels = NUM_CODES
    cfg.model.cond_features = 64
    return cfg


def get_config(arg=None):
    return base.pick_variant(arg, {"top": _top, "bottom": _bottom}, "top")

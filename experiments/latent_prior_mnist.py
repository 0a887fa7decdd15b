"""Priors over the codes of a trained VQ-VAE on MNIST (experiments/vqvae_mnist.py): the
second stage of the latent-prior pipeline (docs/guides/latent.md).

`data.path` names the VQ-VAE's workdir (default runs/vqvae_mnist); its train and test
images are encoded there once (`codes/`) and served as code maps.

Variants (`--config experiments/latent_prior_mnist.py:VARIANT`):
  top      PixelSNAIL over the 7x7 top codes (categorical over the codebook's 64 codes,
           a learned code embedding as input), class-conditional.
           jaxar-train --config experiments/latent_prior_mnist.py:top \
               --workdir runs/prior_top
  bottom   PixelSNAIL over the 14x14 bottom codes conditioned on the top codes of the
           same image (embedded, brought to 14x14 and fed to every gated resnet) and on
           the class.
           jaxar-train --config experiments/latent_prior_mnist.py:bottom \
               --workdir runs/prior_bottom
  bottom_gated  the same prior as a Gated PixelCNN (the top codes enter every gated
           layer's conditioning input).
  smoke_top, smoke_bottom  seconds: tiny priors over the codes of vqvae_mnist.py:smoke
           (set --config.data.path to its workdir), for tests.
The samples_<step>.png a prior writes while training show code maps (code k as grey
level k). Then sample images: jaxar-sample --workdir runs/prior_bottom --top runs/prior_top \
    --num 16 --out latent.png
"""

from experiments import base

NUM_CODES = 64  # experiments/vqvae_mnist.py's codebook
SMOKE_CODES = 8  # its smoke variant's


def _codes(cfg, level: str, shape, num_codes: int):
    cfg.data.source = "codes"
    cfg.data.name = f"vqvae_mnist_{level}"
    cfg.data.path = "runs/vqvae_mnist"
    cfg.data.level = level
    cfg.data.shape = shape
    cfg.data.num_levels = num_codes
    return cfg


def _snail(cfg, features: int, blocks: int, resnets: int):
    cfg.model.name = "pixelsnail"
    cfg.model.likelihood = "categorical"
    cfg.model.num_classes = 10
    cfg.model.features = features
    cfg.model.num_blocks = blocks
    cfg.model.num_resnets = resnets
    cfg.model.key_features = 16
    cfg.model.value_features = 32
    cfg.model.num_heads = 2
    cfg.model.embedding_features = 32
    cfg.model.dropout_rate = 0.1
    cfg.model.nonlinearity = "concat_elu"
    return cfg


def _on_top_codes(cfg, num_codes: int):
    """The bottom prior's conditioning: the 7x7 top codes of the same image."""
    cfg.data.level = "bottom"
    cfg.model.cond_shape = (7, 7, 1)
    cfg.model.cond_levels = num_codes
    cfg.model.cond_features = 32
    return cfg


def _training(cfg, num_steps: int):
    cfg.train.update(
        num_steps=num_steps, batch_size=32, learning_rate=1e-3, lr_decay=0.9995,
        grad_clip=1.0, ema_decay=0.999, log_every_steps=50, eval_every_steps=num_steps // 2,
        checkpoint_every_steps=num_steps // 4, sample_every_steps=num_steps, num_samples=16,
    )
    return cfg


def _top():
    cfg = _codes(base.get_base_config(), "top", (7, 7, 1), NUM_CODES)
    return _training(_snail(cfg, features=64, blocks=2, resnets=2), 2000)


def _bottom():
    cfg = _codes(base.get_base_config(), "bottom", (14, 14, 1), NUM_CODES)
    cfg = _on_top_codes(_snail(cfg, features=64, blocks=2, resnets=2), NUM_CODES)
    return _training(cfg, 2000)


def _bottom_gated():
    cfg = _codes(base.get_base_config(), "bottom", (14, 14, 1), NUM_CODES)
    cfg.model.name = "gated_pixelcnn"
    cfg.model.likelihood = "categorical"
    cfg.model.num_classes = 10
    cfg.model.features = 64
    cfg.model.num_layers = 8
    cfg.model.head_features = 128
    return _training(_on_top_codes(cfg, NUM_CODES), 2000)


def _smoke(cfg):
    cfg.data.path = "runs/vqvae_smoke"
    cfg.model.features = 8
    cfg.model.num_blocks = 1
    cfg.model.num_resnets = 1
    cfg.model.key_features = 4
    cfg.model.value_features = 4
    cfg.model.embedding_features = 4
    cfg.model.dropout_rate = 0.0
    return base.smoke_training(cfg)


def _smoke_top():
    cfg = _codes(base.get_base_config(), "top", (7, 7, 1), SMOKE_CODES)
    return _smoke(_snail(cfg, features=8, blocks=1, resnets=1))


def _smoke_bottom():
    cfg = _codes(base.get_base_config(), "bottom", (14, 14, 1), SMOKE_CODES)
    cfg = _on_top_codes(_snail(cfg, features=8, blocks=1, resnets=1), SMOKE_CODES)
    cfg.model.cond_features = 4
    return _smoke(cfg)


def get_config(arg=None):
    variants = {"top": _top, "bottom": _bottom, "bottom_gated": _bottom_gated,
                "smoke_top": _smoke_top, "smoke_bottom": _smoke_bottom}
    return base.pick_variant(arg, variants, "top")

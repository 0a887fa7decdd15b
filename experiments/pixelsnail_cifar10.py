"""PixelSNAIL on CIFAR-10 (Chen et al., 2018): the published test NLL is 2.85 bits/dim.

Variants (`--config experiments/pixelsnail_cifar10.py:VARIANT`):
  default  a CPU-sized PixelSNAIL (2 blocks of 2 resnets + attention, 32 filters, 5
           mixtures) on TFDS cifar10. Needs prepared TFDS data (docs/guides/data.md), or use
           --config.data.source=folder --config.data.path=PATH/TO/IMAGES.
           jaxar-train --config experiments/pixelsnail_cifar10.py \
               --workdir runs/pixelsnail_cifar10
  mnist    the default network on the embedded 5k MNIST sample at 8 bits (28x28x1, 256
           levels): runs anywhere with no download (docs/results.md).
           jaxar-train --config experiments/pixelsnail_cifar10.py:mnist \
               --workdir runs/pixelsnail_mnist
  smoke    seconds: 8x8x3 synthetic stripes, for tests.
  zigzag   the default generating pixels along anti-diagonals (model.ordering).
  paper    the released CIFAR-10 model `h12_noup_smallkey`: 12 blocks of 4 gated
           resnets (ELU, 2x2 down-right-shifted convolutions) each followed by causal
           attention with 16-dim keys/queries and 128-dim values, no up/down-sampling,
           256 filters, 10 mixtures, dropout 0.5, Adam(0.95, 0.9995) at lr 1e-3 decayed
           by 0.999998 per step, Polyak EMA 0.9995, batch 8 per device (global 64 for 8
           devices: the device count is not in the released code), init on 8 images.
           Target: 2.85 bits/dim on the CIFAR-10 test set (eval/bpd).
           jaxar-train --config experiments/pixelsnail_cifar10.py:paper \
               --workdir runs/pixelsnail_paper
  imagenet32  the released ImageNet 32x32 model and training on TFDS
           `imagenet_resized/32x32` (1.28M images; evaluated on its validation split):
           the paper network with 32 mixtures, dropout 0, Polyak EMA 0.9997 (the
           released README's command). PixelSNAIL reports 3.80 bits/dim there.
"""

from experiments import base


def _common():
    cfg = base.released_cifar10(base.get_base_config())
    cfg.model.name = "pixelsnail"
    cfg.model.ordering = "raster"  # raster | zigzag | custom (with model.pixel_order)
    cfg.model.pixel_order = ()  # flat pixel indices in generation order, for "custom"
    cfg.model.nonlinearity = "concat_elu"
    cfg.model.num_heads = 1
    cfg.model.dropout_rate = 0.5
    return cfg


def _default():
    cfg = base.cpu_cifar10_training(_common())
    cfg.model.features = 32
    cfg.model.num_blocks = 2
    cfg.model.num_resnets = 2
    cfg.model.key_features = 16
    cfg.model.value_features = 16
    cfg.model.num_heads = 2
    cfg.model.num_mixtures = 5
    return cfg


def _zigzag():
    cfg = _default()
    cfg.model.ordering = "zigzag"
    return cfg


def _mnist():
    return base.embedded_mnist_8bit(_default(), num_steps=2000)


def _smoke():
    cfg = base.smoke(_default(), (8, 8, 3))
    cfg.model.features = 8
    cfg.model.num_blocks = 1
    cfg.model.num_resnets = 1
    cfg.model.key_features = 4
    cfg.model.value_features = 4
    cfg.model.num_mixtures = 2
    return cfg


def _paper():
    cfg = base.paper_cifar10_training(_common(), per_device_batch=8, lr_decay=0.999998)
    cfg.model.features = 256
    cfg.model.num_blocks = 12
    cfg.model.num_resnets = 4
    cfg.model.nonlinearity = "elu"
    cfg.model.key_features = 16
    cfg.model.value_features = 128
    cfg.model.num_mixtures = 10
    cfg.model.background_per_channel = True  # 6 position channels, as released
    cfg.model.clip_high_log_scales = False  # the released likelihood
    cfg.train.init_batch_size = 8
    return cfg


def _imagenet32():
    # The released ImageNet command: 32 mixtures, no dropout, Polyak EMA 0.9997.
    cfg = _paper()
    cfg.data.name = "imagenet_resized/32x32"  # test split: "validation"
    cfg.model.num_mixtures = 32
    cfg.model.dropout_rate = 0.0
    cfg.train.ema_decay = 0.9997
    return cfg


def get_config(arg=None):
    variants = {
        "default": _default, "smoke": _smoke, "mnist": _mnist, "zigzag": _zigzag, "paper": _paper,
        "imagenet32": _imagenet32,
    }
    return base.pick_variant(arg, variants, "default")

"""PixelCNN++ on CIFAR-10 (Salimans et al., 2017): the published test NLL is 2.92 bits/dim.

Variants (`--config experiments/pixelcnn_pp_cifar10.py:VARIANT`):
  default  a CPU-sized PixelCNN++ (3 resolutions, 1 resnet per stage, 32 filters, 5
           mixtures) on TFDS cifar10; steps of 16 images take under a second on a CPU.
           Needs prepared TFDS data (docs/guides/data.md); any folder of images works too:
           jaxar-train --config experiments/pixelcnn_pp_cifar10.py \
               --workdir runs/pixelcnn_pp_cifar10
           jaxar-train --config experiments/pixelcnn_pp_cifar10.py \
               --workdir runs/pixelcnn_pp_gems --config.data.source=folder \
               --config.data.path=PATH/TO/IMAGES
  mnist    the default network on the embedded 5k MNIST sample at 8 bits (28x28x1, 256
           levels): runs anywhere with no download (docs/results.md).
           jaxar-train --config experiments/pixelcnn_pp_cifar10.py:mnist \
               --workdir runs/pixelcnn_pp_mnist
  smoke    seconds: 8x8x3 synthetic stripes, for tests and the CLI check.
  paper    the released model and training: 5 gated resnets per stage, 160 filters, 10
           logistic mixtures, concat_elu, dropout 0.5, Adam(0.95, 0.9995) at lr 1e-3
           decayed by 0.999995 per step, Polyak EMA 0.9995, batch 16 per device on 8
           devices (global 128), data-dependent init on 16 images, no gradient clipping.
           Target: 2.92 bits/dim on the CIFAR-10 test set (eval/bpd); the Flax example
           of the same model reached it in about 1.5 days on 8 V100s.
           jaxar-train --config experiments/pixelcnn_pp_cifar10.py:paper \
               --workdir runs/pixelcnn_pp_paper
"""

from experiments import base


def _common():
    cfg = base.released_cifar10(base.get_base_config())
    cfg.model.name = "pixelcnn_pp"
    cfg.model.num_resolutions = 3
    cfg.model.dropout_rate = 0.5
    cfg.train.init_batch_size = 16
    return cfg


def _default():
    cfg = base.cpu_cifar10_training(_common())
    cfg.model.features = 32
    cfg.model.num_resnets = 1
    cfg.model.num_mixtures = 5
    return cfg


def _mnist():
    return base.embedded_mnist_8bit(_default(), num_steps=2000)


def _smoke():
    cfg = base.smoke(_default(), (8, 8, 3))
    cfg.model.features = 8
    cfg.model.num_resolutions = 2
    cfg.model.num_mixtures = 2
    return cfg


def _paper():
    # 1M steps of 128: ~2,560 epochs (the released code caps at 5,000).
    cfg = base.paper_cifar10_training(_common(), per_device_batch=16, lr_decay=0.999995)
    cfg.model.features = 160
    cfg.model.num_resnets = 5
    cfg.model.num_mixtures = 10
    cfg.model.clip_high_log_scales = False  # the released likelihood
    return cfg


def get_config(arg=None):
    return base.pick_variant(
        arg, {"default": _default, "smoke": _smoke, "mnist": _mnist, "paper": _paper}, "default"
    )

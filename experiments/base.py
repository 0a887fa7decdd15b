"""Defaults shared by every experiment; each experiment file overrides what it needs."""

import ml_collections

from jaxar import settings


def get_base_config() -> ml_collections.ConfigDict:
    """Every setting at its default (`jaxar.settings`, where each is documented), but
    evaluation in batches of 256 (no gradients: larger than most training batches)."""
    cfg = settings.base_config()
    cfg.eval.batch_size = 256
    return cfg


def pick_variant(arg, variants: dict, default: str):
    """The config variant named `arg` (the default when arg is empty)."""
    name = arg or default
    if name not in variants:
        raise ValueError(f"config variant must be one of {sorted(variants)}, got {name!r}")
    return variants[name]()


def smoke(cfg: ml_collections.ConfigDict, shape=(8, 8, 1)) -> ml_collections.ConfigDict:
    """Tiny synthetic `stripes` data and a 6-step run that still logs, evaluates, samples
    and checkpoints (twice): the variant tests train in seconds."""
    cfg.data.source = "synthetic"
    cfg.data.name = "stripes"
    cfg.data.shape = tuple(shape)
    cfg.data.num_train = 64
    cfg.data.num_test = 32
    return smoke_training(cfg)


def smoke_training(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`smoke`'s 6-step training schedule alone, for smoke variants with their own data."""
    cfg.train.update(
        num_steps=6, batch_size=8, init_batch_size=8, log_every_steps=2, eval_every_steps=3,
        sample_every_steps=6, checkpoint_every_steps=3, num_samples=4,
    )
    cfg.eval.batch_size = 16
    return cfg


def thresholded_mnist_training(
    cfg: ml_collections.ConfigDict, epochs: int, learning_rate: float
) -> ml_collections.ConfigDict:
    """The reference setup's training: TFDS MNIST thresholded at 0.5, batch 128, plain Adam
    (no clipping, no averaging), `epochs` passes over the 60,000 training images."""
    steps_per_epoch = 60000 // 128
    cfg.data.source = "tfds"
    cfg.data.name = "mnist"
    cfg.train.update(
        batch_size=128, num_steps=epochs * steps_per_epoch, learning_rate=learning_rate,
        lr_decay=1.0, grad_clip=0.0, ema_decay=0.0, eval_every_steps=steps_per_epoch,
        checkpoint_every_steps=steps_per_epoch, sample_every_steps=5 * steps_per_epoch,
    )
    return cfg


def embedded_mnist_8bit(cfg: ml_collections.ConfigDict, num_steps: int):
    """The embedded 5k MNIST sample at all 256 grey levels (28x28x1): real data with no
    download for the colour models' discretized logistic mixture, sized for a CPU run."""
    cfg.data.source = "embedded"
    cfg.data.name = "mnist"
    cfg.data.shape = (28, 28, 1)
    cfg.data.num_levels = 256
    cfg.data.num_test = None
    cfg.train.update(
        num_steps=num_steps, eval_every_steps=num_steps // 4,
        checkpoint_every_steps=num_steps // 4, sample_every_steps=num_steps, num_samples=16,
    )
    return cfg


def released_cifar10(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What the released PixelCNN++ and PixelSNAIL code share: TFDS cifar10 at 8 bits,
    Adam(0.95, 0.9995) without gradient clipping, Polyak averaging 0.9995."""
    cfg.model.likelihood = "dmol"
    cfg.data.source = "tfds"
    cfg.data.name = "cifar10"
    cfg.data.shape = (32, 32, 3)
    cfg.data.num_levels = 256
    cfg.train.update(b1=0.95, b2=0.9995, grad_clip=0.0, ema_decay=0.9995)
    return cfg


def cpu_cifar10_training(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A CPU-sized run of the colour models: batch 16, 5,000 steps, a faster lr decay and
    a shorter average than the papers', evaluated on 1,000 test images."""
    cfg.train.update(
        batch_size=16, init_batch_size=16, num_steps=5000, learning_rate=1e-3, lr_decay=0.99995,
        ema_decay=0.999, log_every_steps=50, eval_every_steps=1000, checkpoint_every_steps=500,
        sample_every_steps=5000, num_samples=4,
    )
    cfg.data.num_test = 1000
    cfg.eval.batch_size = 100
    return cfg


def paper_cifar10_training(cfg, per_device_batch: int, lr_decay: float, devices: int = 8):
    """The released colour models' long run: Adam at 1e-3 decayed by `lr_decay` per step,
    `per_device_batch` on each of `devices` devices (a global batch here), 1M steps."""
    cfg.train.update(
        batch_size=per_device_batch * devices, num_steps=1_000_000, learning_rate=1e-3,
        lr_decay=lr_decay, log_every_steps=100, eval_every_steps=10_000,
        checkpoint_every_steps=5_000, sample_every_steps=50_000,
    )
    cfg.eval.batch_size = per_device_batch * devices
    return cfg

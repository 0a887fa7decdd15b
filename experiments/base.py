"""Defaults shared by every experiment; each experiment file overrides what it needs."""

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0

    cfg.model = ml_collections.ConfigDict()
    cfg.model.name = ""
    cfg.model.num_classes = 0  # 0: unconditional; > 0: class-conditional
    cfg.model.ordering = "raster"

    cfg.data = ml_collections.ConfigDict()
    cfg.data.source = "embedded"  # embedded | tfds | folder | synthetic | codes (+ audio)
    cfg.data.name = "mnist"
    cfg.data.shape = (28, 28, 1)
    cfg.data.num_levels = 2  # 8-bit pixels are reduced as x * num_levels // 256
    cfg.data.tfds_dir = config_dict.placeholder(str)
    cfg.data.num_train = config_dict.placeholder(int)  # use only the first N examples
    cfg.data.num_test = config_dict.placeholder(int)
    # data.source="folder": the image folder (jaxar/data/image_folder.py); "codes": the
    # workdir of a trained VQ-VAE run, whose "top" or "bottom" code maps data.level picks.
    cfg.data.path = ""
    cfg.data.level = "top"
    cfg.data.labels_from_subfolders = False
    cfg.data.test_fraction = 0.1
    # Label classes of data.source="synthetic" (0: no labels); other sources declare theirs.
    cfg.data.num_classes = 0
    # How sample grids show an event, e.g. (28, 28, 1) for sequences of 784; None: as is.
    cfg.data.image_shape = config_dict.placeholder(tuple)
    # grain worker processes reading training batches (0: in this process); None: 0 on
    # CPU, else half the host's cores, at most 8. Each reads data.prefetch batches ahead.
    cfg.data.num_workers = config_dict.placeholder(int)
    cfg.data.prefetch = 2

    cfg.train = ml_collections.ConfigDict()
    cfg.train.num_steps = 1000
    cfg.train.batch_size = 64  # global, split over all devices and hosts
    cfg.train.learning_rate = 1e-3
    cfg.train.lr_decay = 1.0  # multiplied into the learning rate every step
    cfg.train.b1 = 0.9
    cfg.train.b2 = 0.999
    cfg.train.grad_clip = 1.0  # global-norm clipping; <= 0 disables it
    cfg.train.ema_decay = 0.999  # Polyak averaging of the params used for eval and samples
    cfg.train.init_batch_size = 16  # examples for (data-dependent) initialization
    cfg.train.log_every_steps = 50
    cfg.train.eval_every_steps = 500
    cfg.train.checkpoint_every_steps = 500
    cfg.train.sample_every_steps = 1000
    cfg.train.num_samples = 16
    cfg.train.max_checkpoints = 3
    # Micro-batches per step: the global batch is cut into this many pieces whose
    # gradients are averaged, for batches larger than the devices' memory.
    cfg.train.grad_accum_steps = 1
    # "bfloat16": the network computes in bf16 on float32 params and optimizer
    # state; likelihoods and evaluation stay float32.
    cfg.train.compute_dtype = "float32"
    # Divergence guard: training stops when the loss exceeds this many bits/dim (inf: never);
    # None: 8 x log2(data.num_levels), eight times a uniform model's loss.
    cfg.train.max_bpd = config_dict.placeholder(float)

    # Devices as a (data, fsdp) mesh; -1 takes all the devices left. The batch is split
    # over every device; fsdp > 1 also splits params and optimizer state (leaves of at
    # least fsdp_min_size elements) over the fsdp axis, for models too large to replicate.
    cfg.mesh = ml_collections.ConfigDict()
    cfg.mesh.data = -1
    cfg.mesh.fsdp = 1
    cfg.mesh.fsdp_min_size = 2**14

    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.batch_size = 256  # global; rounded up to a multiple of the devices
    cfg.eval.ensemble_masks = 1  # MADE: average p(x) over this many mask sets at test time
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


def seed_survey_training(
    cfg: ml_collections.ConfigDict, epochs: int, learning_rate: float
) -> ml_collections.ConfigDict:
    """The seed survey's training: TFDS MNIST thresholded at 0.5, batch 128, plain Adam
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

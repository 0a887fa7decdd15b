r"""WaveNet on 16 kHz audio as 256-level mu-law codes.

Variants (`--config experiments/wavenet_audio.py:VARIANT`):
  default          synthetic sums of sine tones (no download), 1024 samples (64 ms),
                   conditioned on the tones' frequency band (4 classes); one stack of
                   dilations 1..256 (receptive field 513 samples, > the longest period
                   of 160 samples); 1500 steps of 8 run in minutes on a CPU.
                   jaxar-train --config experiments/wavenet_audio.py \
                       --workdir runs/wavenet_audio
  smoke            seconds, for tests; also conditioned locally on frame means.
  speech_commands  TFDS `speech_commands` (12 word classes), 1 s clips (16000 samples,
                   centre-cropped or zero-padded), conditioned on the word; three stacks of
                   dilations 1..512 (receptive field 3071 samples, 192 ms) with 64
                   residual and 256 skip channels, close to the paper's audio models. For
                   accelerators; needs prepared TFDS data (docs/guides/data.md).
                   jaxar-train --config experiments/wavenet_audio.py:speech_commands \
                       --workdir runs/wavenet_speech
  nsynth           TFDS `nsynth/gansynth_subset` (acoustic notes), the middle second of
                   each 4 s note, conditioned on the instrument family (11); the
                   speech_commands network.
Samples are written as grids with one row of pixels per waveform (intensity = code).
"""

from ml_collections import config_dict

from experiments import base


def _default():
    cfg = base.get_base_config()
    cfg.data.source = "synthetic"
    cfg.data.name = "sinusoids"
    cfg.data.shape = (1024,)
    cfg.data.num_levels = 256
    cfg.data.num_classes = 4  # frequency bands of the synthetic tones
    cfg.data.num_train = 2048
    cfg.data.num_test = 256
    cfg.model.name = "wavenet"
    cfg.model.likelihood = "categorical"
    cfg.model.num_classes = 4
    cfg.model.residual_channels = 32
    cfg.model.gate_channels = 32
    cfg.model.skip_channels = 64
    cfg.model.head_channels = 128
    cfg.model.num_stacks = 1
    cfg.model.layers_per_stack = 9
    # (frames, depth) of local features; None: no local conditioning.
    cfg.model.cond_shape = config_dict.placeholder(tuple)
    cfg.model.cond_features = 16
    cfg.train.num_steps = 1500
    cfg.train.batch_size = 8
    cfg.train.learning_rate = 2e-3
    cfg.train.lr_decay = 0.9995
    cfg.train.eval_every_steps = 500
    cfg.train.checkpoint_every_steps = 500
    cfg.train.sample_every_steps = 1500
    cfg.train.num_samples = 8
    cfg.eval.batch_size = 64
    return cfg


def _smoke():
    cfg = _default()
    cfg.data.shape = (64,)
    cfg.data.num_classes = 2
    cfg.data.num_train = 32
    cfg.data.num_test = 16
    cfg.model.num_classes = 2
    cfg.model.cond_shape = (8, 1)
    cfg.model.cond_features = 4
    cfg.model.residual_channels = 4
    cfg.model.gate_channels = 4
    cfg.model.skip_channels = 8
    cfg.model.head_channels = 8
    cfg.model.num_stacks = 1
    cfg.model.layers_per_stack = 3
    return base.smoke_training(cfg)


def _speech_commands():
    cfg = _default()
    cfg.data.source = "tfds"
    cfg.data.name = "speech_commands"
    cfg.data.shape = (16000,)
    cfg.data.num_classes = 12
    cfg.data.num_train = None
    cfg.data.num_test = None
    cfg.model.num_classes = 12
    cfg.model.residual_channels = 64
    cfg.model.gate_channels = 64
    cfg.model.skip_channels = 256
    cfg.model.head_channels = 256
    cfg.model.num_stacks = 3
    cfg.model.layers_per_stack = 10
    cfg.train.num_steps = 200_000
    cfg.train.batch_size = 16
    cfg.train.learning_rate = 1e-3
    cfg.train.lr_decay = 0.99999
    cfg.train.eval_every_steps = 10_000
    cfg.train.checkpoint_every_steps = 2000
    cfg.train.sample_every_steps = 20_000
    cfg.train.num_samples = 4
    cfg.eval.batch_size = 16
    return cfg


def _nsynth():
    cfg = _speech_commands()
    cfg.data.name = "nsynth/gansynth_subset"
    cfg.data.num_classes = 11
    cfg.model.num_classes = 11
    return cfg


def get_config(arg=None):
    return base.pick_variant(
        arg,
        {
            "default": _default,
            "smoke": _smoke,
            "speech_commands": _speech_commands,
            "nsynth": _nsynth,
        },
        "default",
    )

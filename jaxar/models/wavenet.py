"""WaveNet (van den Oord et al., 2016, "WaveNet: A Generative Model for Raw Audio").

A stack of causal dilated convolutions (kernel 2, dilations 1, 2, 4, ..., 2^k,
repeated `num_stacks` times) over a sequence `[L]` of integer values: an
embedding of the input shifted one step right, a kernel-2 input convolution,
then residual blocks of a gated unit `tanh * sigmoid` with residual and skip
connections, and a ReLU-1x1-ReLU-1x1 head to the likelihood parameters
(a `num_levels`-way categorical: 256 mu-law levels for audio).

Conditioning: a class label (global: speaker, word or digit) adds a learned
bias to every gate; a feature sequence `cond [B, L_c, D]` at a lower rate
(local) is upsampled to the sample rate with a transposed convolution and
projected into every gate. `lowres_condition` builds one from the sequence
itself (means over windows), which is what training uses by default.

Generation (Paine et al., 2016, "Fast Wavenet Generation Algorithm"): every
causal convolution keeps a queue (ring buffer) of its last `dilation` inputs,
so a new sample costs one pass through the layers, O(layers), instead of a
pass over the whole receptive field: `decoder`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar import distributions
from jaxar.models import base, configs
from jaxar.nn import layers


def shift_right(h_BLC: jax.Array, shift: int) -> jax.Array:
    """Moves the sequence `shift` steps later, zeros first: position t then holds t - shift."""
    return jnp.pad(h_BLC, ((0, 0), (shift, 0), (0, 0)))[:, : h_BLC.shape[1]]


class CausalConv1D(nn.Module):
    """Kernel-2 dilated causal convolution: `y_t = W_past h_{t - dilation} + W_now h_t + b`.

    Inputs before the start are zeros. Output t can NOT see inputs after t.
    `step` computes one output from the current input and the one `dilation`
    steps back, with the same parameters.
    """

    features: int
    dilation: int = 1

    def setup(self):
        self.now = nn.Dense(self.features)
        self.past = nn.Dense(self.features, use_bias=False)

    def __call__(self, h_BLC: jax.Array) -> jax.Array:
        return self.now(h_BLC) + self.past(shift_right(h_BLC, self.dilation))

    def step(self, h_BC: jax.Array, past_BC: jax.Array) -> jax.Array:
        return self.now(h_BC) + self.past(past_BC)


class ResidualBlock(nn.Module):
    """Dilated causal conv -> gate (+ label bias, + local features) -> residual and skip 1x1s.

    Output t can NOT see inputs after t (the conditioning inputs are not part
    of the modelled sequence).
    """

    residual_channels: int
    gate_channels: int
    skip_channels: int
    dilation: int

    def setup(self):
        self.conv = CausalConv1D(2 * self.gate_channels, self.dilation)
        self.label_proj = nn.Dense(2 * self.gate_channels, use_bias=False)
        self.cond_proj = nn.Dense(2 * self.gate_channels, use_bias=False)
        self.residual = nn.Dense(self.residual_channels)
        self.skip = nn.Dense(self.skip_channels)

    def __call__(self, h_BLC, label_BK=None, cond_BLD=None):
        """Returns (next residual stream `[B, L, C]`, skip `[B, L, S]`)."""
        return self._gate(self.conv(h_BLC), h_BLC, label_BK, cond_BLD)

    def step(self, h_BC, past_BC, label_BK=None, cond_BD=None):
        """One position: the same as `__call__` at t given h_t and h_{t - dilation}."""
        return self._gate(self.conv.step(h_BC, past_BC), h_BC, label_BK, cond_BD)

    def _gate(self, pre, h, label_BK, cond):
        if label_BK is not None:
            bias_BF = self.label_proj(label_BK)
            pre = pre + (bias_BF[:, None] if pre.ndim == 3 else bias_BF)
        if cond is not None:
            pre = pre + self.cond_proj(cond)
        a, b = jnp.split(pre, 2, axis=-1)
        z = jnp.tanh(a) * jax.nn.sigmoid(b)
        return h + self.residual(z), self.skip(z)


class WaveNet(base.Model):
    """WaveNet over sequences `[L]`; see the module docstring. Raster order only."""

    event_shape: tuple[int]
    num_levels: int
    likelihood_name: str = "categorical"
    residual_channels: int = 32
    gate_channels: int = 32
    skip_channels: int = 128
    head_channels: int = 128
    dilations: tuple[int, ...] = tuple(2**i for i in range(10)) * 2
    num_classes: int = 0
    cond_shape: tuple[int, int] | None = None
    cond_features: int = 16

    @property
    def likelihood(self):
        return distributions.make_likelihood(self.likelihood_name, self.num_levels)

    @property
    def receptive_field(self) -> int:
        """How many past samples position t sees: x_{t-1} back to x_{t-receptive_field}."""
        return 2 + sum(self.dilations)

    def setup(self):
        self.embed = nn.Embed(self.num_levels, self.residual_channels)
        self.input_conv = CausalConv1D(self.residual_channels)
        self.blocks = [
            ResidualBlock(self.residual_channels, self.gate_channels, self.skip_channels, d)
            for d in self.dilations
        ]
        self.head_hidden = nn.Dense(self.head_channels)
        self.head_out = nn.Dense(self.likelihood.num_params())
        if self.cond_shape:
            stride = self.event_shape[0] // self.cond_shape[0]
            self.upsample = nn.ConvTranspose(
                self.cond_features, (stride,), strides=(stride,), padding="VALID"
            )

    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Likelihood parameters `[B, L, F]`."""
        del train
        # The shift makes position t see x_<t only; position 0 sees zeros.
        h_BLC = self.input_conv(shift_right(self.embed(x), 1))
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        cond_BLD = self.upsample_cond(cond)
        skip = 0.0
        for block in self.blocks:
            h_BLC, s = block(h_BLC, label_BK, cond_BLD)
            skip = skip + s
        return self._head(skip)

    def upsample_cond(self, cond):
        """Local features at the sample rate `[B, L, cond_features]`, or None."""
        return self.upsample(cond) if self.cond_shape else None

    def step(self, x_prev_B, t, queues, labels=None, cond_BD=None):
        """Position t from x_{t-1} and the queues: (parameters `[B, F]`, updated queues).

        `queues[0]` holds the input convolution's last input and `queues[1 + i]`
        the last `dilations[i]` inputs of block i (see `init_queues`).
        """
        e_BC = jnp.where(t > 0, self.embed(x_prev_B), 0.0)
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        past_BC, queue = _pop_push(queues[0], e_BC, t)
        new_queues = [queue]
        h_BC = self.input_conv.step(e_BC, past_BC)
        skip = 0.0
        for block, queue in zip(self.blocks, queues[1:], strict=True):
            past_BC, queue = _pop_push(queue, h_BC, t)
            new_queues.append(queue)
            h_BC, s = block.step(h_BC, past_BC, label_BK, cond_BD)
            skip = skip + s
        return self._head(skip), new_queues

    def _head(self, skip):
        return self.head_out(nn.relu(self.head_hidden(nn.relu(skip))))

    @nn.nowrap
    def init_queues(self, batch: int) -> list[jax.Array]:
        """Empty queues `[B, dilation, C]`: zeros are the inputs before the start."""
        return [
            jnp.zeros((batch, d, self.residual_channels), jnp.float32)
            for d in (1, *self.dilations)
        ]

    @nn.nowrap
    def derive_cond(self, x):
        """Local features from the sequence itself (`lowres_condition`), if `cond_shape`."""
        if not self.cond_shape:
            return None
        return lowres_condition(x, self.num_levels, self.cond_shape)

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """One position per call from the queues (`step`): O(layers) per sample."""
        cond_BLD = self.apply(variables, cond, method=WaveNet.upsample_cond)

        def step(queues, x_BL, t):
            x_prev_B = jax.lax.dynamic_index_in_dim(x_BL, jnp.maximum(t - 1, 0), 1, keepdims=False)
            cond_BD = None
            if cond_BLD is not None:
                cond_BD = jax.lax.dynamic_index_in_dim(cond_BLD, t, 1, keepdims=False)
            return self.apply(variables, x_prev_B, t, queues, labels, cond_BD, method=WaveNet.step)

        return base.Decoder(self.init_queues(batch), step)


def _pop_push(queue_BDC, h_BC, t):
    """Reads the input of `dilation` steps ago from its slot and stores the current one there."""
    slot = t % queue_BDC.shape[1]
    past_BC = jax.lax.dynamic_index_in_dim(queue_BDC, slot, axis=1, keepdims=False)
    return past_BC, jax.lax.dynamic_update_index_in_dim(queue_BDC, h_BC, slot, axis=1)


def lowres_condition(x_BL: jax.Array, num_levels: int, cond_shape) -> jax.Array:
    """Local features from the sequence itself `[B, L_c, D]`: frame j's D features are
    the means of x (scaled to [-1, 1]) over D equal parts of the frame's L / L_c samples."""
    frames, depth = cond_shape
    batch, length = x_BL.shape
    x = layers.scale_to_unit(x_BL, num_levels).reshape(batch, frames * depth, -1)
    return x.mean(axis=-1).reshape(batch, frames, depth)


def check_config(f: dict, given: frozenset) -> None:
    """WaveNet's value checks on the resolved fields (`jaxar.models.configs`); turns
    model.num_stacks and model.layers_per_stack into the dilations, unless the config
    gives model.dilations itself."""
    (length,) = f["event_shape"]
    num_stacks, layers_per_stack = f.pop("num_stacks"), f.pop("layers_per_stack")
    if "dilations" not in given:
        f["dilations"] = tuple(2**i for i in range(layers_per_stack)) * num_stacks
    elif {"num_stacks", "layers_per_stack"} & given:
        raise ValueError("model.dilations and model.num_stacks / model.layers_per_stack "
                         "both set the dilations: give one or the other")
    if not f["dilations"]:
        raise ValueError("model.dilations must give at least one dilation, got ()")
    if f["likelihood_name"] not in ("bernoulli", "categorical"):  # one vector per dimension
        raise ValueError(
            f"model.likelihood for wavenet must be 'bernoulli' or 'categorical', "
            f"got {f['likelihood_name']!r}"
        )
    cond_shape = f["cond_shape"] or None
    if cond_shape and (len(cond_shape) != 2 or min(cond_shape) < 1
                       or length % (cond_shape[0] * cond_shape[1])):
        raise ValueError(
            f"model.cond_shape must be (frames, depth) with frames * depth dividing "
            f"the sequence length {length}, got {cond_shape}"
        )
    f["cond_shape"] = cond_shape


configs.register(WaveNet, configs.Spec(
    event_ndim=1,
    aliases={"likelihood": "likelihood_name"},
    # Dilations 1, 2, ..., 2**(layers_per_stack - 1), repeated num_stacks times (or
    # model.dilations as given).
    derived={"num_stacks": 2, "layers_per_stack": 10},
    positive=("residual_channels", "gate_channels", "skip_channels", "head_channels",
              "dilations", "cond_features", "num_stacks", "layers_per_stack"),
    check=check_config,
))

"""MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015).

A fully connected network whose weight masks make output d depend only on the
inputs that come before d in an ordering. `num_masks` mask sets (an input
ordering plus hidden-unit connectivity each) are drawn once from `mask_seed`;
training picks one per step (order- and connectivity-agnostic training) and
`ensemble_log_prob` averages the probabilities of several at test time.
Mask set 0 is the model's ordering for `jaxar.log_prob` and sampling. The
ordering ("raster", "zigzag", "custom", or "random": one permutation per mask
set, `jaxar.models.orderings`) can be any: masks follow it exactly.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar import distributions
from jaxar.models import base, configs, orderings
from jaxar.nn import layers


@functools.cache
def mask_sets(
    event_shape: tuple[int, ...], hidden: tuple[int, ...], num_masks: int, ordering: str,
    seed: int, pixel_order: tuple[int, ...] = (),
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Draws `num_masks` MADE mask sets.

    Returns `(steps_KD, masks)`: the generation step of every input dimension
    per set, and per layer a stacked mask `[K, fan_in, fan_out]`; the last one
    maps the final hidden layer to the D outputs.
    """
    num_dims = int(np.prod(event_shape))
    steps, layer_masks = [], [[] for _ in range(len(hidden) + 1)]
    for k in range(num_masks):
        rng = np.random.default_rng((seed, k))
        step_D = orderings.dimension_steps(ordering, event_shape, pixel_order, rng).ravel()
        steps.append(step_D)
        # A hidden unit of degree m may see inputs with step <= m; output d sees units
        # with degree < step_d. Degrees >= D-1 would feed no output, so they are not drawn.
        prev = step_D
        for layer, width in enumerate(hidden):
            low = int(prev.min())
            degree = rng.integers(low, max(num_dims - 1, low + 1), size=width)
            layer_masks[layer].append(prev[:, None] <= degree[None, :])
            prev = degree
        layer_masks[-1].append(prev[:, None] < step_D[None, :])
    stacked = tuple(np.stack(m).astype(np.float32) for m in layer_masks)
    return np.stack(steps), stacked


class MADE(base.Model):
    """MADE over the flattened event; every dimension is one group of the likelihood."""

    event_shape: tuple[int, ...]
    num_levels: int
    likelihood_name: str = "bernoulli"
    hidden: tuple[int, ...] = (512, 512, 512)
    ordering_name: str = "raster"  # any of `orderings.NAMES`
    pixel_order: tuple[int, ...] = ()  # ordering "custom": the position of each step
    num_masks: int = 1
    mask_seed: int = 0
    num_classes: int = 0

    @property
    def likelihood(self):
        return distributions.make_likelihood(self.likelihood_name, self.num_levels)

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.event_shape))

    def _masks(self):
        return mask_sets(tuple(self.event_shape), tuple(self.hidden), self.num_masks,
                         self.ordering_name, self.mask_seed, tuple(self.pixel_order))

    def ordering(self, mask_index: int = 0) -> np.ndarray:
        return self._masks()[0][mask_index].reshape(self.event_shape)

    def setup(self):
        self.hidden_layers = [layers.MaskedDense(width) for width in self.hidden]
        if self.num_classes:
            self.label_layers = [nn.Dense(width, use_bias=False) for width in self.hidden]
        self.out_layer = layers.MaskedDense(self.num_dims * self.likelihood.num_params())

    def __call__(self, x, labels=None, cond=None, train: bool = False, mask_index=0):
        """Likelihood parameters `[B, *event_shape, F]`; `mask_index` picks the mask set."""
        del cond, train
        _, masks = self._masks()
        batch = x.shape[0]
        h = layers.scale_to_unit(x.reshape(batch, self.num_dims), self.num_levels)
        pre_BH = self.hidden_layers[0](h, jnp.asarray(masks[0])[mask_index])
        num_params = self.likelihood.num_params()
        # Every output dimension gets `num_params` units that share its mask column.
        out_mask = jnp.repeat(jnp.asarray(masks[-1])[mask_index], num_params, axis=1)
        out = self.out_layer(self._hidden(pre_BH, labels, mask_index), out_mask)
        return out.reshape(batch, *self.event_shape, num_params)

    def _hidden(self, pre_BH, labels, mask_index):
        """The last hidden layer from the first one's pre-activation."""
        _, masks = self._masks()
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        h = pre_BH
        for layer in range(len(self.hidden)):
            if layer:
                h = self.hidden_layers[layer](h, jnp.asarray(masks[layer])[mask_index])
            if label_BK is not None:
                h = h + self.label_layers[layer](label_BK)
            h = nn.relu(h)
        return h

    def decode_step(self, pre_BH, x_seen_BD, x_BD, prev, dim, labels):
        """Parameters `[B, F]` of `dim` (mask set 0) after dimension `prev` was drawn:
        the first layer's pre-activation is updated by `prev`'s change alone."""
        _, masks = self._masks()
        scale = lambda v: layers.scale_to_unit(v, self.num_levels)
        delta_B = scale(x_BD[:, prev]) - scale(x_seen_BD[:, prev])
        pre_BH = self.hidden_layers[0].add_input_row(pre_BH, delta_B, prev, masks[0][0])
        num_params = self.likelihood.num_params()
        h = self._hidden(pre_BH, labels, 0)
        out_mask = jnp.repeat(jnp.asarray(masks[-1][0]), num_params, axis=1)
        params_BF = self.out_layer.output_columns(h, dim * num_params, num_params, out_mask)
        return params_BF, pre_BH, x_seen_BD.at[:, prev].set(x_BD[:, prev])

    def first_preactivation(self, x_BD):
        """The first hidden layer's pre-activation `[B, H]` of x (mask set 0)."""
        _, masks = self._masks()
        return self.hidden_layers[0](layers.scale_to_unit(x_BD, self.num_levels), masks[0][0])

    @nn.nowrap
    def training_kwargs(self, rng) -> dict:
        """Order- and connectivity-agnostic training: a mask set drawn per step."""
        if self.num_masks > 1:
            return {"mask_index": jax.random.randint(rng, (), 0, self.num_masks)}
        return {}

    @property
    def ensemble_size(self) -> int:
        return self.num_masks

    @nn.nowrap
    def ensemble_log_prob(self, variables, x, labels, num_members: int):
        """Test-time ensemble: log of the mean probability of x over the first
        `num_members` mask sets, per example `[B]` (no per-dimension factorization)."""
        if not 1 <= num_members <= self.num_masks:
            raise ValueError(
                f"eval.ensemble_masks must be in [1, model.num_masks={self.num_masks}], "
                f"got {num_members}"
            )

        def joint(k):
            params = self.apply(variables, x, labels, mask_index=k)
            lp = self.likelihood.log_prob(params, x[..., None])
            return lp.reshape(x.shape[0], -1).sum(-1)

        lp_KB = jax.lax.map(joint, jnp.arange(num_members))
        return jax.nn.logsumexp(lp_KB, axis=0) - jnp.log(num_members)

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """One dimension per call: the first layer's pre-activation is kept and updated
        by each drawn dimension's column, O(H) instead of O(D H); the deeper layers and
        the drawn dimension's output units run as usual."""
        del cond
        order = jnp.asarray(base.generation_order(self))
        zeros = jnp.zeros((batch, self.num_dims), jnp.int32)
        apply = functools.partial(self.apply, variables)

        def start(cache, x_BD, b):  # once, on the initial x (known values written)
            del cache, b
            return apply(x_BD, method=MADE.first_preactivation), x_BD

        def step(cache, x_BD, t):
            pre_BH, x_seen_BD = cache
            prev, dim = order[jnp.maximum(t - 1, 0)], order[t]
            params_BF, pre_BH, x_seen_BD = apply(
                pre_BH, x_seen_BD, x_BD, prev, dim, labels, method=MADE.decode_step
            )
            return params_BF, (pre_BH, x_seen_BD)

        pre = jnp.zeros((batch, self.hidden[0]), jnp.float32)
        return base.Decoder((pre, zeros), step, start_block=start)


def check_config(f: dict, given: frozenset) -> None:
    """MADE's value checks on the resolved fields (`jaxar.models.configs`)."""
    if "likelihood_name" not in given and f["num_levels"] != 2:
        f["likelihood_name"] = "categorical"  # the default, bernoulli, is for binary data
    orderings.check_fields(f)
    # Raises for an unknown or unsuitable ordering.
    orderings.dimension_steps(f["ordering_name"], f["event_shape"], f["pixel_order"],
                              np.random.default_rng(0))
    if not f["hidden"]:
        raise ValueError("model.hidden must give at least one hidden layer width, got ()")


configs.register(MADE, configs.Spec(
    event_ndim=(1, 2, 3),
    aliases={"likelihood": "likelihood_name", "ordering": "ordering_name"},
    positive=("hidden", "num_masks"),
    check=check_config,
))

"""A decoder-only Transformer over the flattened dimensions of an image or a sequence.

The network runs over generation *steps*, not positions: step t reads the
value generated at step t-1 (a learned start token at step 0, plus the class
embedding for class-conditional models) and outputs the parameters of the
dimension generated at step t. With the usual lower-triangular attention mask
over steps, the mask follows the model's ordering ("raster", "zigzag", "random"
or "custom", `jaxar.models.orderings`): dimension `order[t]` sees exactly the
dimensions generated before it.

Each step's input adds to the token embedding two position encodings, of the
dimension to predict (`order[t]`) and of the dimension the token comes from
(`order[t-1]`), each the sum (learned) or concatenation (sinusoidal) of
per-axis encodings of (row, column, channel). Blocks are pre-LayerNorm:
`h + attn(LN(h))`, then `h + MLP(LN(h))`.

Generation keeps every layer's keys and values (a KV cache): each step runs
one token through the blocks and attends over the cached steps,
`decoder`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar import distributions
from jaxar.models import base, configs, orderings

_MASKED = -1e30  # logit of attention weights that must be exactly zero


@functools.cache
def make_ordering(name: str, event_shape: tuple[int, ...], seed: int = 0,
                  pixel_order: tuple[int, ...] = ()) -> np.ndarray:
    """Generation step of every dimension, int array of `event_shape`
    (`jaxar.models.orderings`: raster, zigzag, random over every dimension from `seed`,
    custom)."""
    steps = orderings.dimension_steps(name, event_shape, pixel_order,
                                      np.random.default_rng(seed))
    steps.setflags(write=False)  # shared by every caller through the cache
    return steps


def sinusoidal_table(event_shape: tuple[int, ...], features: int) -> np.ndarray:
    """Fixed encodings `[D, features]` of every flat dimension's coordinates.

    Each axis gets an equal share of sin/cos pairs at geometric frequencies;
    left-over features are zero.
    """
    coords_AD = np.indices(event_shape).reshape(len(event_shape), -1)
    pairs = features // (2 * len(event_shape))
    freqs = 1.0 / (10000.0 ** (np.arange(pairs) / max(pairs, 1)))
    parts = []
    for coord_D in coords_AD:
        angle_DP = coord_D[:, None] * freqs[None, :]
        parts += [np.sin(angle_DP), np.cos(angle_DP)]
    table = np.concatenate(parts, axis=1)
    return np.pad(table, ((0, 0), (0, features - table.shape[1]))).astype(np.float32)


class PositionTable(nn.Module):
    """Encodings `[D, features]` of every flat dimension from its (row, column, channel).

    "learned": a sum of one learned table per axis. "sinusoidal": fixed
    sin/cos features, through a learned linear map when `project` (so that two
    tables built from the same features stay distinguishable).
    """

    event_shape: tuple[int, ...]
    features: int
    kind: str = "learned"
    project: bool = False

    @nn.compact
    def __call__(self) -> jax.Array:
        if self.kind == "sinusoidal":
            table_DF = jnp.asarray(sinusoidal_table(self.event_shape, self.features))
            if self.project:
                table_DF = nn.Dense(self.features, use_bias=False)(table_DF)
            return table_DF
        coords_AD = np.indices(self.event_shape).reshape(len(self.event_shape), -1)
        table_DF = 0.0
        for axis, size in enumerate(self.event_shape):
            axis_table = self.param(
                f"axis_{axis}", nn.initializers.normal(0.02), (size, self.features)
            )
            table_DF = table_DF + axis_table[coords_AD[axis]]
        return table_DF


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over steps: step t can NOT see steps after t."""

    features: int
    num_heads: int

    def setup(self):
        self.qkv = nn.Dense(3 * self.features)
        self.out = nn.Dense(self.features)

    def _qkv(self, h):
        head_dim = self.features // self.num_heads
        q, k, v = jnp.split(self.qkv(h), 3, axis=-1)
        split = lambda a: a.reshape(*a.shape[:-1], self.num_heads, head_dim)
        return split(q) / head_dim**0.5, split(k), split(v)  # a Python float keeps q's dtype

    def __call__(self, h_BTD):
        batch, steps, _ = h_BTD.shape
        q, k, v = self._qkv(h_BTD)
        logits_BHTS = jnp.einsum("bthd,bshd->bhts", q, k)
        causal_TS = jnp.tril(jnp.ones((steps, steps), bool))
        weights = jax.nn.softmax(jnp.where(causal_TS, logits_BHTS, _MASKED), axis=-1)
        out_BTHD = jnp.einsum("bhts,bshd->bthd", weights, v)
        return self.out(out_BTHD.reshape(batch, steps, self.features))

    def step(self, h_BD, t, cache):
        """Step t alone: writes its key and value into the cache `(k, v)`, each `[B, T, H, Dh]`."""
        q_BHD, k_BHD, v_BHD = self._qkv(h_BD)
        k_cache = jax.lax.dynamic_update_index_in_dim(cache[0], k_BHD, t, axis=1)
        v_cache = jax.lax.dynamic_update_index_in_dim(cache[1], v_BHD, t, axis=1)
        logits_BHS = jnp.einsum("bhd,bshd->bhs", q_BHD, k_cache)
        seen_S = jnp.arange(k_cache.shape[1]) <= t
        weights = jax.nn.softmax(jnp.where(seen_S, logits_BHS, _MASKED), axis=-1)
        out_BHD = jnp.einsum("bhs,bshd->bhd", weights, v_cache)
        return self.out(out_BHD.reshape(h_BD.shape[0], self.features)), (k_cache, v_cache)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block; step t can NOT see steps after t."""

    features: int
    num_heads: int
    mlp_ratio: int = 4
    dropout_rate: float = 0.0

    def setup(self):
        self.attn_norm = nn.LayerNorm()
        self.attn = CausalSelfAttention(self.features, self.num_heads)
        self.mlp_norm = nn.LayerNorm()
        self.mlp_in = nn.Dense(self.mlp_ratio * self.features)
        self.mlp_out = nn.Dense(self.features)
        self.dropout = nn.Dropout(self.dropout_rate)

    def _mlp(self, h):
        return self.mlp_out(nn.gelu(self.mlp_in(self.mlp_norm(h))))

    def __call__(self, h_BTD, train: bool = False):
        h_BTD = h_BTD + self.dropout(self.attn(self.attn_norm(h_BTD)), deterministic=not train)
        return h_BTD + self.dropout(self._mlp(h_BTD), deterministic=not train)

    def step(self, h_BD, t, cache):
        a_BD, cache = self.attn.step(self.attn_norm(h_BD), t, cache)
        h_BD = h_BD + a_BD
        return h_BD + self._mlp(h_BD), cache


class Transformer(base.Model):
    """Decoder-only Transformer over images `[H, W, C]` or sequences `[L]`, in any ordering."""

    event_shape: tuple[int, ...]
    num_levels: int
    likelihood_name: str = "categorical"
    features: int = 128
    num_heads: int = 4
    num_layers: int = 4
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    position: str = "learned"
    ordering_name: str = "raster"  # any of `orderings.NAMES`
    ordering_seed: int = 0
    pixel_order: tuple[int, ...] = ()  # ordering "custom": the position of each step
    num_classes: int = 0

    @property
    def likelihood(self):
        return distributions.make_likelihood(self.likelihood_name, self.num_levels)

    def ordering(self):
        return make_ordering(self.ordering_name, tuple(self.event_shape), self.ordering_seed,
                             tuple(self.pixel_order))

    def setup(self):
        d = self.features
        self.token_embed = nn.Embed(self.num_levels, d)
        self.start = self.param("start", nn.initializers.normal(0.02), (d,))
        if self.num_classes:
            self.label_embed = nn.Embed(self.num_classes, d)
        self.target_pos = PositionTable(self.event_shape, d, self.position)
        self.source_pos = PositionTable(self.event_shape, d, self.position, project=True)
        self.blocks = [
            Block(d, self.num_heads, self.mlp_ratio, self.dropout_rate)
            for _ in range(self.num_layers)
        ]
        self.final_norm = nn.LayerNorm()
        self.head = nn.Dense(self.likelihood.num_params())

    def position_tables(self):
        """Per step t: encodings of the dimension to predict (order[t]) and of the
        dimension its input token comes from (order[t-1]; row 0 is unused), `[T, d]` each."""
        order_T = base.generation_order(self)
        target_TD = self.target_pos()[order_T]
        source_TD = jnp.roll(self.source_pos()[order_T], 1, axis=0)
        return target_TD, source_TD

    def _start(self, labels, batch):
        start_BD = jnp.broadcast_to(self.start, (batch, self.features))
        if self.num_classes and labels is not None:
            start_BD = start_BD + self.label_embed(labels)
        return start_BD

    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Likelihood parameters `[B, *event_shape, F]`."""
        del cond
        batch = x.shape[0]
        order_T = base.generation_order(self)
        x_BT = x.reshape(batch, -1)[:, order_T]  # the value generated at each step
        target_TD, source_TD = self.position_tables()
        prev_BTD = self.token_embed(x_BT[:, :-1]) + source_TD[1:]
        h_BTD = jnp.concatenate([self._start(labels, batch)[:, None], prev_BTD], axis=1)
        h_BTD = h_BTD + target_TD
        for block in self.blocks:
            h_BTD = block(h_BTD, train)
        out_BTF = self.head(self.final_norm(h_BTD))
        out_BDF = out_BTF[:, np.asarray(self.ordering()).ravel()]  # steps -> dimensions
        return out_BDF.reshape(batch, *self.event_shape, out_BTF.shape[-1])

    def step(self, x_prev_B, t, caches, tables, labels=None):
        """Step t from the value generated at step t-1: (parameters `[B, F]`, new caches)."""
        target_TD, source_TD = tables
        token_BD = self.token_embed(x_prev_B) + source_TD[t]
        h_BD = jnp.where(t > 0, token_BD, self._start(labels, x_prev_B.shape[0]))
        h_BD = h_BD + target_TD[t]
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            h_BD, cache = block.step(h_BD, t, cache)
            new_caches.append(cache)
        return self.head(self.final_norm(h_BD)), new_caches

    @nn.nowrap
    def init_caches(self, batch: int):
        """Empty key/value caches `[B, T, H, Dh]`, one pair per block."""
        shape = (batch, int(np.prod(self.event_shape)), self.num_heads,
                 self.features // self.num_heads)
        return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in range(self.num_layers)]

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """One dimension per call with the key/value caches (one token through the blocks)."""
        del cond
        order_T = jnp.asarray(base.generation_order(self))
        tables = self.apply(variables, method=Transformer.position_tables)

        def step(caches, x_flat_BD, t):
            prev_dim = order_T[jnp.maximum(t - 1, 0)]
            x_prev_B = jax.lax.dynamic_index_in_dim(x_flat_BD, prev_dim, axis=1, keepdims=False)
            return self.apply(
                variables, x_prev_B, t, caches, tables, labels, method=Transformer.step
            )

        return base.Decoder(self.init_caches(batch), step)


def check_config(f: dict, given: frozenset) -> None:
    """The Transformer's value checks on the resolved fields (`jaxar.models.configs`)."""
    del given
    if f["features"] % f["num_heads"]:
        raise ValueError(
            f"model.features={f['features']} must be divisible by "
            f"model.num_heads={f['num_heads']}"
        )
    if f["position"] not in ("learned", "sinusoidal"):
        raise ValueError(
            f"model.position must be 'learned' or 'sinusoidal', got {f['position']!r}"
        )
    if f["likelihood_name"] not in ("bernoulli", "categorical"):  # one vector per dimension
        raise ValueError(
            f"model.likelihood for transformer must be 'bernoulli' or 'categorical', "
            f"got {f['likelihood_name']!r}"
        )
    if not 0.0 <= f["dropout_rate"] < 1.0:
        raise ValueError(f"model.dropout_rate must lie in [0, 1), got {f['dropout_rate']}")
    # Raises for an unknown or unsuitable ordering.
    orderings.check_fields(f)
    make_ordering(f["ordering_name"], f["event_shape"], f["ordering_seed"], f["pixel_order"])


configs.register(Transformer, configs.Spec(
    event_ndim=(1, 3),
    aliases={"likelihood": "likelihood_name", "ordering": "ordering_name"},
    positive=("features", "num_heads", "mlp_ratio"),
    check=check_config,
))

"""PixelSNAIL (Chen et al., 2018): gated residual convolutions interleaved with causal attention.

Each of `num_blocks` blocks runs `num_resnets` gated resnets on the pixel
stream, then one causal multi-head self-attention: keys and values come from
the block input concatenated with the image itself and two background
(position) features, queries from the block input and the background; the
attention result enters a last gated resnet as its auxiliary input. No
down-sampling ("noup"); small keys, as in the released CIFAR-10 model.

Orderings: a pixel ordering (raster, zigzag, random or any permutation given as
"custom": `jaxar.models.orderings`) fixes which
pixels each pixel may attend to: those generated strictly before it. The
convolutional parts must respect it too:

* raster: PixelCNN++'s up-left stream and 2x2 down-right-shifted
  convolutions (as released), which see exactly the raster-earlier pixels;
* any other ordering: no spatial convolution can follow it, so the stream
  starts from the previous pixel *in generation order* (the input shifted
  by one step, through a 1x1 layer) and the gated resnets use 1x1 layers;
  all spatial context then comes through attention.

The network output at a pixel never sees that pixel, so the channels of a
pixel are generated R, G, B through the discretized logistic mixture and
`ordering()` gives sub-pixel steps `pixel_step * C + c`.

A prior over VQ-VAE codes (VQ-VAE-2): `likelihood="categorical"` models one
code in [0, num_levels) per pixel (one channel), read through a learned code
embedding instead of the scaled value; `cond_levels = K > 0` conditions every
gated resnet on a coarser int code map `cond` `[B, h, w, 1]` in [0, K), embedded
and upsampled to the image (`layers.CodeUpsampler`, which sees the whole map).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar import distributions
from jaxar.models import base, configs, orderings, released
from jaxar.nn import cache, fast_conv, layers
from jaxar.nn import shifted_layers as sl

LIKELIHOODS = ("dmol", "categorical")


@functools.cache
def pixel_steps(name: str, height: int, width: int, pixel_order: tuple[int, ...] = (),
                seed: int = 0) -> np.ndarray:
    """Generation step of every pixel, int array `[H, W]` (`jaxar.models.orderings`: raster,
    zigzag, random from `seed`, custom: `pixel_order` the flat pixel index i * W + j of
    each step)."""
    steps = orderings.position_steps(name, (height, width), pixel_order,
                                     np.random.default_rng(seed))
    steps.setflags(write=False)  # shared by every caller through the cache
    return steps


def shift_in_order(x_BHWC: jax.Array, steps_HW: np.ndarray) -> jax.Array:
    """Each pixel receives the pixel generated one step before it (zeros for the first).

    Output at pixel p can NOT see any pixel but the one at step `steps[p] - 1`.
    """
    batch, height, width, channels = x_BHWC.shape
    flat_steps = steps_HW.ravel()
    order = np.argsort(flat_steps)  # pixel generated at each step
    previous = order[np.maximum(flat_steps - 1, 0)]
    x_BNC = x_BHWC.reshape(batch, height * width, channels)[:, previous]
    x_BNC = jnp.where((flat_steps > 0)[None, :, None], x_BNC, 0.0)
    return x_BNC.reshape(x_BHWC.shape)


# Queries per block of `causal_attention`: at 32x32 (1024 pixels) 16 blocks, which compute
# 53% of the full [N, N] logits. Smaller blocks skip more logits but compile longer; 64
# gave the fastest `default` train step on CPU, while at paper size (batch 1, where
# attention is a small part of the step) blocking gains nothing (`benchmarks/attention.py`,
# figures in docs/benchmarks.md).
QUERY_BLOCK = 64


def causal_attention(q_BHWK, k_BHWK, v_BHWV, steps_HW: np.ndarray, num_heads: int):
    """Multi-head attention of every pixel over the pixels generated strictly before it.

    Output at pixel p can NOT see keys or values of pixel p itself or of any
    pixel generated after it; the first pixel attends to nothing and gets 0.

    Pixels are taken in generation order, where what a query sees is a prefix: queries
    in blocks of `QUERY_BLOCK`, each block against the keys generated before its last
    query only, so the logits that the mask would discard are mostly never computed
    (attention was most of the PixelSNAIL train step on CPU). The weights are those of the
    full masked softmax: a masked logit's weight there is exactly 0.
    """
    batch, height, width, _ = q_BHWK.shape
    n = height * width
    flat = steps_HW.ravel()
    order = np.argsort(flat)  # the pixel generated at each step
    # Raster order is pixel order: its identity gathers (and their gradients' scatters)
    # would be a measurable cost of the attention's forward and backward.
    permute = not np.array_equal(order, np.arange(n))
    to_steps = lambda a: a[:, order] if permute else a
    heads = lambda a: to_steps(a.reshape(batch, n, num_heads, a.shape[-1] // num_heads))
    q, k, v = heads(q_BHWK), heads(k_BHWK), heads(v_BHWV)
    scale = q.shape[-1] ** 0.5
    blocks = []
    for start in range(0, n, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, n)
        seen = max(stop - 1, 1)  # the keys any of these queries sees: steps < stop - 1
        logits_BHQM = jnp.einsum("bqhd,bmhd->bhqm", q[:, start:stop], k[:, :seen]) / scale
        visible_QM = np.arange(start, stop)[:, None] > np.arange(seen)[None, :]
        weights = jax.nn.softmax(jnp.where(visible_QM, logits_BHQM, -1e30), axis=-1)
        blocks.append(jnp.einsum("bhqm,bmhd->bqhd", weights, v[:, :seen]))
    out_BSHD = jnp.concatenate(blocks, axis=1)
    # No earlier pixel (step 0): attend to nothing. Zeroing that output rather than its
    # row of weights spares a pass over the weights.
    out_BSHD = out_BSHD * (np.arange(n) > 0)[:, None, None]
    out_BNHD = out_BSHD[:, flat] if permute else out_BSHD
    return out_BNHD.reshape(batch, height, width, -1)


class PixelSNAIL(base.Model):
    event_shape: tuple[int, int, int]
    num_levels: int
    features: int = 256
    num_blocks: int = 12
    num_resnets: int = 5
    key_features: int = 16
    value_features: int = 128
    num_heads: int = 1
    num_mixtures: int = 10
    dropout_rate: float = 0.5
    nonlinearity: str = "concat_elu"
    num_classes: int = 0
    ordering_name: str = "raster"  # any of `orderings.NAMES`: pixels in any order
    pixel_order: tuple[int, ...] = ()  # ordering "custom": the pixel of each step
    ordering_seed: int = 0  # ordering "random"
    conv_impl: str = "auto"
    likelihood_name: str = "dmol"  # or "categorical": codes, one channel
    embedding_features: int = 32  # the code embedding's size (categorical only)
    cond_shape: tuple[int, ...] | None = None  # (h, w, 1): a coarser code map
    cond_levels: int = 0  # its codes' range [0, K); > 0 with cond_shape
    cond_features: int = 32  # the upsampled code map's features
    # True: the row and the column position each repeated over the image's C channels
    # (2 * C background channels), as the released code computes them; False: 2.
    background_per_channel: bool = False
    # False: log-scales clipped below only (at -7), as the released code's likelihood.
    clip_high_log_scales: bool = True

    def setup(self):
        # `cond_map` runs alone in the decoder: a setup module, named "cond_net".
        if self.cond_levels:
            (height, width, _), (h, w, _) = self.event_shape, self.cond_shape
            self.cond_net = layers.CodeUpsampler(self.cond_levels, self.cond_features,
                                                 (height // h, width // w), sl.fan_in_init)

    @property
    def likelihood(self):
        return distributions.make_likelihood(
            self.likelihood_name, self.num_levels, self.num_mixtures, self.event_shape[-1],
            distributions.DiscretizedLogisticMixture.max_log_scale
            if self.clip_high_log_scales else float("inf"),
        )

    def pixel_steps(self) -> np.ndarray:
        height, width, _ = self.event_shape
        return pixel_steps(self.ordering_name, height, width, tuple(self.pixel_order),
                           self.ordering_seed)

    def ordering(self):
        channels = self.event_shape[-1]
        return self.pixel_steps()[..., None] * channels + np.arange(channels)

    @nn.nowrap
    def is_raster(self) -> bool:
        """Raster ordering: the up-left stream and spatial gated resnets (else all 1x1)."""
        return orderings.is_raster(self.pixel_steps())

    @nn.nowrap
    def background(self) -> np.ndarray:
        """Row and column positions `(i - H/2) / H`, `(j - W/2) / W` in [-1/2, 1/2), as in the
        released code: `[H, W, 2]`, or `[H, W, 2 * C]` with `background_per_channel` (the
        row C times, then the column C times: the released code's 6 channels for RGB)."""
        height, width, channels = self.event_shape
        rows = (np.arange(height) - height / 2) / height
        cols = (np.arange(width) - width / 2) / width
        grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).astype(np.float32)
        return np.repeat(grid, channels, axis=-1) if self.background_per_channel else grid

    @nn.nowrap
    def layer_names(self) -> dict:
        """The name of every layer, by role: the one table `__call__` names its layers
        from (also when decoding).

        The stream's input: {"ul_above", "ul_left"} (raster: `sl.up_left_stream`) or
        {"shift_in"} (any other ordering: the previous pixel through a 1x1 layer);
        "out"; and per block b `blocks[b]`: "res" (its gated resnets, in order),
        "content", "kv", "query_res", "query" and "out" (the gated resnet taking the
        attention); "embed" (the code embedding, categorical) and "cond" (the conditioning
        network, `cond_levels > 0`). Names: `ul_above`, `shift_in`, `block0_res1`,
        `block2_kv`, ...
        """
        names = {"ul_above": "ul_above", "ul_left": "ul_left"} if self.is_raster() else {
            "shift_in": "shift_in"}
        if self.likelihood_name == "categorical":
            names["embed"] = "embed"
        if self.cond_levels:
            names["cond"] = "cond_net"  # `setup`'s attribute
        names["blocks"] = [
            {"res": [f"block{b}_res{k}" for k in range(self.num_resnets)],
             **{role: f"block{b}_{role}" for role in ("content", "kv", "query_res", "query",
                                                       "out")}}
            for b in range(self.num_blocks)
        ]
        names["out"] = "out"
        return names

    @nn.nowrap
    def released_layers(self) -> list[released.Layer]:
        """The layers in the order neocxi/pixelsnail-public's `_base_noup_smallkey_spec`
        creates them (`jaxar.models.released`): its `conv2d_k` / `dense_k` variables.

        Per block: the gated resnets (2x2 conv_in, gate_out), then the content resnet
        (1x1 conv_in, gate_out), its key/value layer, the query resnet and layer, and the
        resnet taking the attention (conv_in, aux_in, gate_out); last the output layer.
        """
        wanted = {"raster ordering": self.is_raster(), "dmol likelihood":
                  self.likelihood_name == "dmol", "RGB images": self.event_shape[-1] == 3,
                  "no classes": not self.num_classes, "no cond": not self.cond_levels,
                  "one attention head": self.num_heads == 1, "key_features=16":
                  self.key_features == 16, "background_per_channel":
                  self.background_per_channel}
        missing = [what for what, ok in wanted.items() if not ok]
        if missing:
            raise ValueError(f"the released PixelSNAIL has {', '.join(wanted)}; this config "
                             f"differs in: {', '.join(missing)}")
        names = self.layer_names()
        layer = lambda *path, kind="dense": released.Layer(path, kind)
        layers = [layer(names["ul_above"], kind="conv2d"), layer(names["ul_left"], kind="conv2d")]
        for block in names["blocks"]:
            for name in block["res"]:
                layers += [layer(name, "conv_in", kind="conv2d"),
                           layer(name, "gate_out", kind="conv2d")]
            layers += [layer(block["content"], "conv_in"), layer(block["content"], "gate_out"),
                       layer(block["kv"]),
                       layer(block["query_res"], "conv_in"), layer(block["query_res"],
                                                                   "gate_out"),
                       layer(block["query"]),
                       layer(block["out"], "conv_in"), layer(block["out"], "aux_in"),
                       layer(block["out"], "gate_out")]
        order = released.original_dmol_order(self.num_mixtures)
        return layers + [released.Layer((names["out"],), "dense", order)]

    def cond_map(self, cond):
        """The conditioning map `[B, H, W, cond_features]` of the codes `cond`, or None."""
        return self.cond_net(cond) if self.cond_levels else None

    @nn.compact
    def __call__(self, x, labels=None, cond=None, train: bool = False, step=None,
                 cond_map=None):
        """Mixture parameters `[B, H, W, F]`, one vector per pixel (categorical:
        logits `[B, H, W, 1, num_levels]`).

        Decoding (`decoder`: `step` t given, the "cache" collection of `jaxar.nn.cache`
        at the pixel generated at step t): the parameters of that pixel only, `[B, 1, 1,
        F]`, from x (every pixel generated before t written) and `cond_map` (`cond_map()`
        of the codes, computed once). The same modules run there on the pixel alone: the
        spatial layers from their caches, the attention over cached keys and values.
        """
        names = self.layer_names()
        steps = self.pixel_steps()
        batch, height, width, _ = x.shape
        label_BK = layers.one_hot_labels(labels, self.num_classes)
        embed = None
        if self.likelihood_name == "categorical":
            embed = nn.Embed(self.num_levels, self.embedding_features,
                             embedding_init=sl.direction_init, name=names["embed"])

        def inputs(x):  # (the network's input, the same with the channel of ones)
            if embed is None:
                return sl.pixel_inputs(x, self.num_levels)
            x_in = embed(x[..., 0])  # N(0, 1) at init: the scale of dmol's x in [-1, 1]
            return x_in, sl.with_ones(x_in)

        background = self.background()
        if step is None:
            cond_BHWD = self.cond_map(cond)
            at = at_prev = lambda a_BHWD: a_BHWD
            x_in, x_pad = inputs(x)
            background = jnp.broadcast_to(background, (batch, height, width,
                                                      background.shape[-1]))
        else:  # the pixel generated at step t and the one before it
            order = jnp.asarray(np.argsort(steps.ravel()).astype(np.int32))
            pixel, prev = order[step], order[jnp.maximum(step - 1, 0)]  # t = 0: a placeholder

            def pick(p):
                def at(a_BHWD):
                    a_BND = a_BHWD.reshape(a_BHWD.shape[0], height * width, -1)
                    return jax.lax.dynamic_slice_in_dim(a_BND, p, 1, 1)[:, :, None]
                return at

            at, at_prev = pick(pixel), pick(prev)
            cond_BHWD = cond_map
            x_prev, x_prev_pad = inputs(at_prev(x))
            background = jnp.broadcast_to(background[None], (batch, height, width,
                                                            background.shape[-1]))
        if self.is_raster():  # decoding: `jaxar.nn.cache` cuts the pixel's window from x_pad
            ul = sl.up_left_stream(x_pad if step is None else inputs(x)[1], self.features,
                                   self.conv_impl, (names["ul_above"], names["ul_left"]))
            conv = "down_right"
        else:
            shifted = (shift_in_order(x_pad, steps) if step is None
                       else jnp.where(step > 0, x_prev_pad, 0.0))
            ul = sl.WNDense(self.features, name=names["shift_in"])(shifted)
            conv = "nin"

        def resnet(kind, name, x, aux=None, where=at):
            module = sl.GatedResnet(kind, self.dropout_rate, self.nonlinearity, self.conv_impl,
                                    name=name)
            return module(x, aux, label_BK, train, None if cond_BHWD is None
                          else where(cond_BHWD))

        for b, block in enumerate(names["blocks"]):
            for name in block["res"]:
                ul = resnet(conv, name, ul)
            kv_layer = sl.WNDense(self.key_features + self.value_features, name=block["kv"])
            if step is None:
                content = resnet("nin", block["content"],
                                 jnp.concatenate([x_in, ul, background], axis=-1))
                kv = kv_layer(content)
                key, value = kv[..., : self.key_features], kv[..., self.key_features :]
                self._build_cache(b, ul, key, value)
            else:  # the keys and values of the pixel before, drawn now; its stream was kept
                stream = self.variable("cache", f"stream{b}")
                content = jnp.concatenate([x_prev, stream.value, at_prev(background)], -1)
                kv = kv_layer(resnet("nin", block["content"], content, where=at_prev))
                stream.value = ul
                keys, values = self._cached_keys_values(b, kv, prev)
            query = resnet("nin", block["query_res"], jnp.concatenate([ul, at(background)], -1))
            query = sl.WNDense(self.key_features, name=block["query"])(query)
            if step is None:
                attended = causal_attention(query, key, value, steps, self.num_heads)
            else:
                visible_N = jnp.asarray(steps.ravel()) < step
                attended = attend(query, keys, values, visible_N, step > 0, self.num_heads)
            ul = resnet("nin", block["out"], ul, attended)
        out = sl.WNDense(self.likelihood.num_params(), name=names["out"])(jax.nn.elu(ul))
        if self.likelihood.groups_channels or step is not None:
            return out
        return out.reshape(*x.shape, out.shape[-1])  # [B, H, W, 1, F]

    def _build_cache(self, b, ul, key, value):
        """Block b's decoding state, created while `jaxar.nn.cache.init` traces a full pass:
        the stream at the last pixel and every pixel's keys and values `[B, H * W, heads,
        d]` (raster index)."""
        if not self.is_mutable_collection("cache") or self.is_initializing():
            return
        batch, n = ul.shape[0], ul.shape[1] * ul.shape[2]
        self.variable("cache", f"stream{b}", jnp.zeros, (batch, 1, 1, ul.shape[-1]))
        for kind, a in (("keys", key), ("values", value)):
            shape = (batch, n, self.num_heads, a.shape[-1] // self.num_heads)
            self.variable("cache", f"{kind}{b}", jnp.zeros, shape)

    def _cached_keys_values(self, b, kv_B11F, p):
        """Block b's key and value caches with pixel p's written from `kv_B11F`."""
        caches = []
        for kind, new in (("keys", kv_B11F[..., : self.key_features]),
                          ("values", kv_B11F[..., self.key_features :])):
            cache_var = self.variable("cache", f"{kind}{b}")
            new = new.reshape(new.shape[0], 1, self.num_heads, -1)
            cache_var.value = jax.lax.dynamic_update_slice_in_dim(cache_var.value, new, p, 1)
            caches.append(cache_var.value)
        return caches

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """One call per pixel in generation order (the network output at a pixel does not
        see it): this `__call__` with `step`, from `jaxar.nn.cache` caches."""
        x_BHWC = jnp.zeros((batch, *self.event_shape), jnp.int32)
        width = self.event_shape[1]
        order = jnp.asarray(np.argsort(self.pixel_steps().ravel()).astype(np.int32))
        cond_BHWD = None
        if self.cond_levels:  # once for the whole map: `cond` is known before sampling
            cond_BHWD = self.apply(variables, cond, method=PixelSNAIL.cond_map)

        def step(state, x_flat_BD, t):
            pixel = order[t]
            decoding = {**variables, "cache": cache.at(state, pixel // width, pixel % width)}
            x = x_flat_BD.reshape(batch, *self.event_shape)
            params, updates = self.apply(decoding, x, labels, None, step=t, cond_map=cond_BHWD,
                                         mutable=["cache"])
            return params.reshape(batch, -1), updates["cache"]

        state = cache.init(self, variables, x_BHWC, labels, cond)
        return base.Decoder(state, step, dims_per_step=self.event_shape[-1])


def attend(query_B11K, keys_BNHD, values_BNHD, visible_N, any_visible, num_heads):
    """`causal_attention` for one query, over the cached pixels `visible_N`."""
    batch = keys_BNHD.shape[0]
    q = query_B11K.reshape(batch, 1, num_heads, -1)
    logits_BH1N = jnp.einsum("bnhd,bmhd->bhnm", q, keys_BNHD) / q.shape[-1] ** 0.5
    weights = jax.nn.softmax(jnp.where(visible_N, logits_BH1N, -1e30), axis=-1)
    weights = weights * any_visible  # no earlier pixel: attend to nothing
    out_B1HD = jnp.einsum("bhnm,bmhd->bnhd", weights, values_BNHD)
    return out_B1HD.reshape(batch, 1, 1, -1)


def check_config(f: dict, given: frozenset) -> None:
    """PixelSNAIL's value checks on the resolved fields (`jaxar.models.configs`)."""
    shape, ordering, pixel_order = f["event_shape"], f["ordering_name"], f["pixel_order"]
    check_likelihood(f, given)
    check_code_cond(f, given)
    orderings.check_fields(f)
    pixel_steps(ordering, shape[0], shape[1], pixel_order, f["ordering_seed"])  # validates it
    key_features, value_features, num_heads = (
        f["key_features"], f["value_features"], f["num_heads"])
    if key_features % num_heads or value_features % num_heads:
        raise ValueError(
            f"model.key_features={key_features} and model.value_features={value_features} "
            f"must both be divisible by model.num_heads={num_heads}"
        )
    sl.check_dropout_rate(f["dropout_rate"])
    if f["nonlinearity"] not in sl.NONLINEARITIES:
        raise ValueError(
            f"model.nonlinearity must be one of {list(sl.NONLINEARITIES)}, "
            f"got {f['nonlinearity']!r}"
        )
    fast_conv.check_impl(f["conv_impl"])


def check_likelihood(f: dict, given: frozenset) -> None:
    """model.likelihood: "dmol" (pixels), or "categorical" (codes: one channel)."""
    name, shape = f["likelihood_name"], f["event_shape"]
    if name not in LIKELIHOODS:
        raise ValueError(f"model.likelihood must be one of {list(LIKELIHOODS)} for "
                         f"pixelsnail, got {name!r}")
    if name == "categorical" and shape[-1] != 1:
        raise ValueError(f"model.likelihood='categorical' models one code per pixel: "
                         f"data.shape needs 1 channel, got {shape}")
    unread = {"dmol": "embedding_features", "categorical": "num_mixtures"}[name]
    if unread in given:
        raise ValueError(f"model.{unread} is not read with model.likelihood={name!r}")


def check_code_cond(f: dict, given: frozenset) -> None:
    """model.cond_shape (h, w, 1) and model.cond_levels K: both or neither; h, w divide
    the image."""
    shape, levels = f["event_shape"], f["cond_levels"]
    cond_shape = f["cond_shape"] = f["cond_shape"] or None  # (): no conditioning
    if bool(cond_shape) != bool(levels):
        raise ValueError(
            f"model.cond_shape={cond_shape} and model.cond_levels={levels}: PixelSNAIL "
            "conditions on integer codes only, so set both (cond_levels > 0) or neither"
        )
    if not cond_shape:
        if "cond_features" in given:
            raise ValueError("model.cond_features is read only with model.cond_levels > 0")
        return
    if (len(cond_shape) != 3 or cond_shape[2] != 1 or min(cond_shape) < 1
            or shape[0] % cond_shape[0] or shape[1] % cond_shape[1]):
        raise ValueError(
            f"model.cond_shape must be (h, w, 1) with h, w dividing the image size "
            f"{shape[:2]}, got {cond_shape}"
        )


configs.register(PixelSNAIL, configs.Spec(
    event_ndim=3,
    aliases={"ordering": "ordering_name", "likelihood": "likelihood_name"},
    positive=("features", "key_features", "value_features", "num_heads", "num_mixtures",
              "embedding_features", "cond_features"),
    check=check_config,
))

"""Cached sampling for PixelSNAIL in any pixel ordering: one call per pixel, in generation order.

Call s computes the mixture parameters of pixel p = order[s] (the pixel
generated at step s), whose channels the loop then draws (`dims_per_step = C`:
the network output at p does not see p). Every activation at p sees only
pixels generated before p:

* the stream: in raster order PixelCNN++'s up-left stream and 2x2
  down-right-shifted gated resnets, run at one position from per-layer input
  maps (`pixelcnn_pp_cache.Layers`), which raster order fills in time; in any
  other ordering the stream starts from the previous pixel in generation order,
  order[s - 1], through the 1x1 layer "shift_in", and its gated resnets are
  1x1: all pointwise, computed at p alone;
* the attention: its query at p reads the keys and values of the pixels
  generated before p.

Keys and values of pixel p are the only activations that see pixel p itself
(the block's content is [x, ul, background]), so they are computed one call
later, once p is drawn, from the block's stream value at p kept in the state
("ul/<block>"), into the slot of p in the block's key and value caches
("keys/<block>", "values/<block>", `[B, H * W, heads, d]`, pixels in raster
index order as in the full pass). The query at p attends to the slots of the
pixels whose generation step is < s, the mask `pixelsnail.causal_attention`
applies (raster order is the case order[s] = s).

The input of a pixel is x scaled to [-1, 1] (dmol) or its code's embedding
(categorical), read from the "embed" table. With `cond_levels > 0` the
conditioning map (`PixelSNAIL.cond_map`, the model's own module, run once on the
whole code map `cond` before the loop) enters every gated resnet at the pixel
it runs at.

`Decoder` restates `PixelSNAIL.__call__` over the model's own parameter tree,
reading every layer's name from `PixelSNAIL.layer_names` (the table the model
names its layers from) and the weight-norm arithmetic and padding geometry
from `jaxar.nn.shifted_layers`; `tests/test_cached_sampling_pp.py` checks that
it reads every parameter and computes what a full forward pass computes.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.models import base, pixelcnn_pp_cache
from jaxar.nn import shifted_layers as sl


class Decoder(pixelcnn_pp_cache.Layers):
    """`cond_BND`: the conditioning map of every pixel (raster index), or None."""

    def __init__(self, model, params, labels, cond_BND, batch, build=False):
        super().__init__(model, params, labels, batch, build)
        self.cond = cond_BND
        height, width, _ = model.event_shape
        self.size = (height, width)
        self.raster = model.is_raster()
        steps = model.pixel_steps().ravel()
        self.steps = jnp.asarray(steps)  # generation step of each pixel, [H * W]
        self.order = jnp.asarray(np.argsort(steps).astype(np.int32))  # pixel of each step
        background = model.background()
        self.background = jnp.asarray(background.reshape(-1, background.shape[-1]))  # [H*W, P]

    def _state(self, s, key, shape):
        if key not in s:
            if not self.build:
                raise KeyError(f"no state {key!r}: build the state first")
            s[key] = jnp.zeros(shape, jnp.float32)
        return s[key]

    def _background_at(self, p):
        grid = jax.lax.dynamic_slice_in_dim(self.background, p, 1, axis=0)
        return jnp.broadcast_to(grid, (self.batch, 1, 1, grid.shape[-1]))

    def _cond_at(self, p):
        if self.cond is None:
            return None
        return jax.lax.dynamic_slice_in_dim(self.cond, p, 1, axis=1).reshape(self.batch, 1, 1, -1)

    def _inputs(self, x_BHWC):
        """The network's input of x, and the same with the channel of ones (`__call__`'s)."""
        if "embed" not in self.names:
            return sl.pixel_inputs(x_BHWC, self.model.num_levels)
        embedded = jnp.take(self.params[self.names["embed"]]["embedding"], x_BHWC[..., 0],
                            axis=0)
        return embedded, sl.with_ones(embedded)

    def _pixel_inputs(self, x_flat_BD, p):
        """`_inputs` of pixel p, `[B, 1, 1, .]`."""
        channels = self.model.event_shape[-1]
        x = jax.lax.dynamic_slice_in_dim(x_flat_BD, p * channels, channels, axis=1)
        return self._inputs(x.reshape(self.batch, 1, 1, channels))

    def step(self, s, x_flat_BD, t):
        """Likelihood parameters `[B, 1, 1, F]` of the pixel generated at step t; first
        finishes the keys and values of the pixel generated before it (now drawn)."""
        s = dict(s)
        model = self.model
        pixel, prev = self.order[t], self.order[jnp.maximum(t - 1, 0)]  # t = 0: a placeholder
        x_prev, x_prev_pad = self._pixel_inputs(x_flat_BD, prev)
        heads, n = model.num_heads, self.size[0] * self.size[1]
        cond_prev, cond = self._cond_at(prev), self._cond_at(pixel)
        for b, block in enumerate(self.names["blocks"]):
            ul_prev = self._state(s, f"ul/{b}", (self.batch, 1, 1, model.features))
            content = jnp.concatenate([x_prev, ul_prev, self._background_at(prev)], axis=-1)
            content = self.resnet_nin(block["content"], content, cond=cond_prev)
            kv = sl.wn_dense(self.params[block["kv"]], content)
            k, v = kv[..., : model.key_features], kv[..., model.key_features :]
            for name, new in ((f"keys/{b}", k), (f"values/{b}", v)):
                cache = self._state(s, name, (self.batch, n, heads, new.shape[-1] // heads))
                new = new.reshape(self.batch, 1, heads, -1)
                s[name] = jax.lax.dynamic_update_slice_in_dim(cache, new, prev, axis=1)

        i, j = pixel // self.size[1], pixel % self.size[1]
        if self.raster:
            x_BHWC = x_flat_BD.reshape(self.batch, *model.event_shape)
            ul = self.up_left(pixelcnn_pp_cache.pad_image(self._inputs(x_BHWC)[1]), i, j)
        else:  # pixelsnail.shift_in_order: the previous pixel, zeros for the first
            shifted = jnp.where(t > 0, x_prev_pad, 0.0)
            ul = sl.wn_dense(self.params[self.names["shift_in"]], shifted)
        background = self._background_at(pixel)
        visible_N = self.steps < t
        for b, block in enumerate(self.names["blocks"]):
            for name in block["res"]:
                if self.raster:
                    ul = self.resnet_pos(s, name, self.size, ul, None, i, j, cond)
                else:
                    ul = self.resnet_nin(name, ul, cond=cond)
            s[f"ul/{b}"] = ul
            query = jnp.concatenate([ul, background], -1)
            query = self.resnet_nin(block["query_res"], query, cond=cond)
            query = sl.wn_dense(self.params[block["query"]], query)
            attended = _attend(query, s[f"keys/{b}"], s[f"values/{b}"], visible_N, t > 0, heads)
            ul = self.resnet_nin(block["out"], ul, attended, cond)
        return sl.wn_dense(self.params[self.names["out"]], jax.nn.elu(ul)), s


def _as_dicts(tree):
    """A parameter subtree (any Mapping) as the nested dicts `flax` applies."""
    return {k: _as_dicts(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _attend(query_B11K, keys_BNHD, values_BNHD, visible_N, any_visible, num_heads):
    """`pixelsnail.causal_attention` for one query, over the cached pixels `visible_N`."""
    batch = keys_BNHD.shape[0]
    q = query_B11K.reshape(batch, 1, num_heads, -1)
    logits_BH1N = jnp.einsum("bnhd,bmhd->bhnm", q, keys_BNHD) / q.shape[-1] ** 0.5
    weights = jax.nn.softmax(jnp.where(visible_N, logits_BH1N, -1e30), axis=-1)
    weights = weights * any_visible  # no earlier pixel: attend to nothing
    out_B1HD = jnp.einsum("bhnm,bmhd->bnhd", weights, values_BNHD)
    return out_B1HD.reshape(batch, 1, 1, -1)


def decoder(model, variables, labels, cond, batch):
    """The `base.Decoder` of a `PixelSNAIL` in its ordering: one call per pixel."""
    params = variables["params"]
    x_flat = jnp.zeros((batch, int(np.prod(model.event_shape))), jnp.int32)
    cond_BND = None
    if model.cond_levels:  # once for the whole map: `cond` is known before sampling
        name = model.layer_names()["cond"]
        cond_map = model.apply({"params": {name: _as_dicts(params[name])}}, cond,
                               method="cond_map")
        cond_BND = cond_map.reshape(batch, -1, cond_map.shape[-1])

    def step(state, x_flat_BD, t):
        decoder = Decoder(model, params, labels, cond_BND, batch)
        params_B11F, state = decoder.step(state, x_flat_BD, t)
        return params_B11F.reshape(batch, -1), state

    def build():
        decoder = Decoder(model, params, labels, cond_BND, batch, build=True)
        return decoder.step({}, x_flat, 0)[1]

    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(build))
    return base.Decoder(state, step, dims_per_step=model.event_shape[-1])

"""Cached sampling for PixelSNAIL with raster ordering: one position per layer per pixel.

In raster order every activation of PixelSNAIL at pixel p sees only pixels
before p: the up-left stream and the 2x2 down-right-shifted gated resnets (as
in PixelCNN++, `pixelcnn_pp_cache.Layers` with per-layer input maps), the
pointwise layers, and the attention, whose query at p reads the keys and
values of pixels < p. Keys and values of pixel p are the only activations
that see pixel p itself (the block's content is [x, ul, background]), so
they are computed at the next pixel, once p is drawn, from the block's
stream value at p kept in the state ("ul/<block>"), and appended to the
block's key and value caches ("keys/<block>", "values/<block>",
`[B, H * W, heads, d]`). The query at p attends to every cached position,
masked to those < p, exactly as `pixelsnail.causal_attention` masks.

`Decoder` restates `PixelSNAIL.__call__` (raster branch) over the model's own
parameter tree: a change there needs the same change here, which
`tests/test_cached_sampling_pp.py` enforces.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp

from jaxar.models import decoding, pixelcnn_pp_cache
from jaxar.models.pixelcnn_pp_cache import _dense
from jaxar.nn import layers


def layout(model):
    """Parameter names of `PixelSNAIL.__call__`'s layers (raster), in creation order."""
    counts = collections.Counter()

    def name(kind):
        counts[kind] += 1
        return f"{kind}_{counts[kind] - 1}"

    names = {"ul_above": name("WNConv"), "ul_left": name("WNConv"), "blocks": []}
    for _ in range(model.num_blocks):
        block = {"res": [name("GatedResnet") for _ in range(model.num_resnets)]}
        block["content"], block["kv"] = name("GatedResnet"), name("WNDense")
        block["query_res"], block["query"] = name("GatedResnet"), name("WNDense")
        block["out"] = name("GatedResnet")
        names["blocks"].append(block)
    names["out"] = name("WNDense")
    return names


class Decoder(pixelcnn_pp_cache.Layers):
    def __init__(self, model, params, labels, batch, build=False):
        super().__init__(model, params, labels, batch, build)
        self.names = layout(model)
        height, width, _ = model.event_shape
        self.size = (height, width)
        grid = jnp.asarray(_background(height, width))  # [H * W, 2]
        self.background = jnp.broadcast_to(grid, (batch, *grid.shape))

    def _at(self, a_BNC, p):
        return jax.lax.dynamic_slice_in_dim(a_BNC, p, 1, axis=1)[:, :, None, :]  # [B, 1, 1, C]

    def pixel(self, s, x_BHWC, x_pad, i, j):
        """Mixture parameters `[B, 1, 1, F]` of pixel (i, j); first finishes the keys and
        values of the pixel before it (now drawn)."""
        s = dict(s)
        model, width = self.model, self.size[1]
        p = i * width + j
        prev = jnp.maximum(p - 1, 0)  # at p = 0 a placeholder, overwritten at p = 1
        x_in = layers.scale_to_unit(x_BHWC, model.num_levels)
        x_in = x_in.reshape(self.batch, -1, x_BHWC.shape[-1])  # [B, H * W, C]
        heads = model.num_heads
        for b, block in enumerate(self.names["blocks"]):
            key = f"ul/{b}"
            if key not in s:
                s[key] = jnp.zeros((self.batch, 1, 1, model.features), jnp.float32)
            content = jnp.concatenate(
                [self._at(x_in, prev), s[key], self._at(self.background, prev)], axis=-1
            )
            content = self.resnet_nin(block["content"], content)
            kv = _dense(self.params[block["kv"]], content)
            k, v = kv[..., : model.key_features], kv[..., model.key_features :]
            for name, new in ((f"keys/{b}", k), (f"values/{b}", v)):
                if name not in s:
                    shape = (self.batch, self.size[0] * width, heads, new.shape[-1] // heads)
                    s[name] = jnp.zeros(shape, jnp.float32)
                new = new.reshape(self.batch, 1, heads, -1)
                s[name] = jax.lax.dynamic_update_slice_in_dim(s[name], new, prev, axis=1)

        ul = self.up_left(x_pad, self.names["ul_above"], self.names["ul_left"], i, j)
        background = self._at(self.background, p)
        for b, block in enumerate(self.names["blocks"]):
            for name in block["res"]:
                ul = self.resnet_pos(s, name, self.size, ul, None, i, j)
            s[f"ul/{b}"] = ul
            query = self.resnet_nin(block["query_res"], jnp.concatenate([ul, background], -1))
            query = _dense(self.params[block["query"]], query)
            attended = _attend(query, s[f"keys/{b}"], s[f"values/{b}"], p, heads)
            ul = self.resnet_nin(block["out"], ul, attended)
        return _dense(self.params[self.names["out"]], jax.nn.elu(ul)), s


def _attend(query_B11K, keys_BNHD, values_BNHD, p, num_heads):
    """`pixelsnail.causal_attention` for the one query at raster position p."""
    batch, n = keys_BNHD.shape[:2]
    q = query_B11K.reshape(batch, 1, num_heads, -1)
    logits_BH1N = jnp.einsum("bnhd,bmhd->bhnm", q, keys_BNHD) / q.shape[-1] ** 0.5
    visible_N = jnp.arange(n) < p
    weights = jax.nn.softmax(jnp.where(visible_N, logits_BH1N, -1e30), axis=-1)
    weights = weights * (p > 0)  # no earlier pixel: attend to nothing
    out_B1HD = jnp.einsum("bhnm,bmhd->bnhd", weights, values_BNHD)
    return out_B1HD.reshape(batch, 1, 1, -1)


def _background(height, width):
    from jaxar.models.pixelsnail import _background as full

    return full((1, height, width, 1))[0].reshape(height * width, 2)


def decoder(model, variables, labels, cond, batch):
    """The `base.Decoder` of a raster `PixelSNAIL`, one call per pixel."""
    del cond
    params = variables["params"]
    x_BHWC = jnp.zeros((batch, *model.event_shape), jnp.int32)

    def pixel_params(state, x_BHWC, i, j):
        decoder = Decoder(model, params, labels, batch)
        return decoder.pixel(state, x_BHWC, pixelcnn_pp_cache.image_map(model, x_BHWC), i, j)

    def build():
        decoder = Decoder(model, params, labels, batch, build=True)
        x_pad = pixelcnn_pp_cache.image_map(model, x_BHWC)
        return decoder.pixel({}, x_BHWC, x_pad, 0, 0)[1]

    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(build))
    return decoding.pixel_decoder(model, state, pixel_params, per_pixel=True)

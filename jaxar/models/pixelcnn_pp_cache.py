"""Cached sampling for PixelCNN++: the u stream by rows, the ul stream by pixels, per resolution.

PixelCNN++'s `u` stream (down-shifted) at row i of the image sees only rows < i,
and its `ul` stream at pixel (i, j) only the pixels before (i, j); at resolution
l (the image halved l times) position (a, b) sees only what full-resolution
position (2^l a, 2^l b) sees: the stride-2 layers read rows 2a - 1 .. 2a (and
columns up to 2b), the transposed ones map (r, c) back to (r // 2, c // 2). So
every activation of the network is final, and computed exactly once, at the
raster step where its position is reached:

* at the start of image row i, each resolution l with 2^l | i computes row
  i / 2^l of every u layer (up pass, then down pass), from per-layer maps of the
  inputs its 2-row windows read;
* at pixel (i, j), each resolution l with 2^l | i and 2^l | j computes position
  (i / 2^l, j / 2^l) of every ul layer (up pass, the lower resolutions, down
  pass) and writes what later positions read into the maps of the layers that
  read it. Resolution 0 runs at every pixel, resolution l on a 4^-l share of
  them (`lax.cond`).

Each layer keeps its input map zero-padded (and, for a transposed layer,
dilated) as its convolution pads it, so a position's output is the layer's
ordinary VALID convolution of a kernel-sized window, and a row's that of a
2-row strip. The network output at a pixel does not see the pixel, so it is
computed once per pixel and all its channels are drawn from it
(`decoding.pixel_decoder(..., per_pixel=True)`).

`Decoder` restates `PixelCNNPP.__call__` over the model's own parameter tree,
reading every layer's name from `PixelCNNPP.layer_names` (the table the model
names its layers from), the weight-norm arithmetic (`sl.wn_conv_window`,
`sl.wn_dense`) and every layer's padding (`sl.Geometry`) from
`jaxar.nn.shifted_layers`; `tests/test_cached_sampling_pp.py` checks that it
reads every parameter and computes what a full forward pass computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxar.models import decoding
from jaxar.nn import layers
from jaxar.nn import shifted_layers as sl

U_IN = sl.down_geometry()  # the u stream's input layer, `sl.down_shifted_conv(f)`
# The image map (x with its channel of ones) that the three input layers read.
IMAGE = sl.covering(U_IN, sl.UP_LEFT_ABOVE, sl.UP_LEFT_LEFT)
DOWN, DOWN_RIGHT = sl.RESNET_GEOMETRIES["down"], sl.RESNET_GEOMETRIES["down_right"]
DOWN_STRIDE2 = sl.down_geometry(strides=2)  # the up pass's `sl.down_shifted_conv(f, strides=2)`
DOWN_RIGHT_STRIDE2 = sl.down_right_geometry(strides=2)
DOWN_TRANSPOSE = sl.down_transpose_geometry()
DOWN_RIGHT_TRANSPOSE = sl.down_right_transpose_geometry()


class Layers:
    """The shifted layers of `jaxar.nn.shifted_layers` run at one row or position from maps.

    State: a dict of maps, one per convolution (its input map, `sl.Geometry`; key:
    the layer's name), plus whatever the model's decoder keeps. Layer names come
    from `model.layer_names()`. With `build=True` every branch runs unconditionally
    and missing maps are created (zeros): the decoder traces it once, abstractly,
    for the state's shapes.
    """

    def __init__(self, model, params, labels, batch, build=False):
        self.model, self.params, self.batch, self.build = model, params, batch, build
        self.names = model.layer_names()
        self.label_BK = layers.one_hot_labels(labels, model.num_classes)
        self.f = sl.NONLINEARITIES[getattr(model, "nonlinearity", "concat_elu")]

    # -- maps ------------------------------------------------------------------------------

    def _map(self, s, key, geom, size, channels):
        if key not in s:
            if not self.build:
                raise KeyError(f"no map {key!r}: build the state first")
            s[key] = jnp.zeros(geom.map_shape(self.batch, *size, channels), jnp.float32)
        return s[key]

    def write_pos(self, s, key, geom, size, value_B11C, a, b):
        """Writes the input of the layer reading map `key` at its position (a, b)."""
        m = self._map(s, key, geom, size, value_B11C.shape[-1])
        start = (0, *geom.input_at(a, b), 0)
        s[key] = jax.lax.dynamic_update_slice(m, value_B11C.astype(m.dtype), start)

    def write_row(self, s, key, geom, size, value_B1WC, a):
        """Writes the input of the layer reading map `key` at its row a."""
        m = self._map(s, key, geom, size, value_B1WC.shape[-1])
        if geom.dilation > 1:
            interior = geom.dilation - 1
            config = [(0, 0, 0), (0, 0, 0), (0, 0, interior), (0, 0, 0)]
            value_B1WC = jax.lax.pad(value_B1WC, jnp.zeros((), value_B1WC.dtype), config)
        start = (0, *geom.input_at(a, 0), 0)
        s[key] = jax.lax.dynamic_update_slice(m, value_B1WC.astype(m.dtype), start)

    def conv_pos(self, s, key, geom, p, r, c, map_geom=None):
        """Output (r, c) `[B, 1, 1, O]` of the layer of `geom` with parameters p reading
        map `key` (laid out by `map_geom` if it is a larger map several layers share)."""
        m = s[key]
        dr, dc = sl.offset(geom, map_geom or geom)
        row, col = geom.window_at(r, c)
        size = (self.batch, geom.kh, geom.kw, m.shape[-1])
        return sl.wn_conv_window(p, jax.lax.dynamic_slice(m, (0, row + dr, col + dc, 0), size))

    def conv_row(self, s, key, geom, p, r, map_geom=None):
        """Output row r `[B, 1, W, O]` of the layer of `geom` with parameters p reading
        map `key` (laid out by `map_geom`, as in `conv_pos`)."""
        m = s[key]
        map_geom = map_geom or geom
        dr, dc = sl.offset(geom, map_geom)
        cols = m.shape[2] - dc - (map_geom.right - geom.right)
        size = (self.batch, geom.kh, cols, m.shape[-1])
        strip = jax.lax.dynamic_slice(m, (0, geom.window_at(r, 0)[0] + dr, dc, 0), size)
        return sl.wn_conv_window(p, strip, (1, geom.stride))

    def when(self, pred, fn, s):
        """`fn(s)` if pred else s; only the maps fn changes go through the `lax.cond`
        (the rest is read-only there), so that no unchanged map is copied."""
        if self.build:
            return fn(s)
        changed = []

        def probe(s):
            out = fn(dict(s))
            changed.extend(k for k in out if k not in s or out[k] is not s[k])
            return 0

        jax.eval_shape(probe, s)

        def run(sub):
            out = fn({**s, **sub})
            return {k: out[k] for k in changed}

        sub = jax.lax.cond(pred, run, lambda sub: sub, {k: s[k] for k in changed})
        return {**s, **sub}

    # -- layers ----------------------------------------------------------------------------

    def up_left(self, x_map, i, j):
        """`sl.up_left_stream` at pixel (i, j), from the image map (`image_map`)."""
        s = {"image": x_map}
        p_above, p_left = self.params[self.names["ul_above"]], self.params[self.names["ul_left"]]
        # layers.down_shift / right_shift: pixel (i, j) reads output (i - 1, j) of the 1x3
        # layer and output (i, j - 1) of the 2x1 layer, zeros in the first row / column.
        above = self.conv_pos(s, "image", sl.UP_LEFT_ABOVE, p_above, jnp.maximum(i - 1, 0), j,
                              IMAGE)
        left = self.conv_pos(s, "image", sl.UP_LEFT_LEFT, p_left, i, jnp.maximum(j - 1, 0),
                             IMAGE)
        return jnp.where(i > 0, above, 0.0) + jnp.where(j > 0, left, 0.0)

    def resnet_nin(self, name, x, aux=None, cond=None):
        """`sl.GatedResnet("nin")`: pointwise (cond: the conditioning map at x's positions)."""
        p = self.params[name]
        h = sl.wn_dense(p["conv_in"], self.f(x))
        if aux is not None:
            h = h + sl.wn_dense(p["aux_in"], self.f(aux))
        return self._gate(name, x, sl.wn_dense(p["gate_out"], self.f(h)), cond)

    def _gate(self, name, x, h, cond=None):
        if self.label_BK is not None:
            h = h + (self.label_BK @ self.params[name]["label_bias"]["kernel"])[:, None, None, :]
        if cond is not None:
            h = h + sl.wn_dense(self.params[name]["cond_in"], cond)
        return sl.gate(x, h)

    def resnet_row(self, s, name, size, x, aux, a):
        """`sl.GatedResnet("down")` at row a of a map of `size` (x, aux: `[B, 1, W, F]`)."""
        p = self.params[name]
        self.write_row(s, name + "/conv_in", DOWN, size, self.f(x), a)
        h = self.conv_row(s, name + "/conv_in", DOWN, p["conv_in"], a)
        if aux is not None:
            h = h + sl.wn_dense(p["aux_in"], self.f(aux))
        self.write_row(s, name + "/gate_out", DOWN, size, self.f(h), a)
        return self._gate(name, x, self.conv_row(s, name + "/gate_out", DOWN, p["gate_out"], a))

    def resnet_pos(self, s, name, size, x, aux, a, b, cond=None):
        """`sl.GatedResnet("down_right")` at position (a, b) of a map of `size` (cond: the
        conditioning map there, `[B, 1, 1, D]`)."""
        p = self.params[name]
        self.write_pos(s, name + "/conv_in", DOWN_RIGHT, size, self.f(x), a, b)
        h = self.conv_pos(s, name + "/conv_in", DOWN_RIGHT, p["conv_in"], a, b)
        if aux is not None:
            h = h + sl.wn_dense(p["aux_in"], self.f(aux))
        self.write_pos(s, name + "/gate_out", DOWN_RIGHT, size, self.f(h), a, b)
        gate = self.conv_pos(s, name + "/gate_out", DOWN_RIGHT, p["gate_out"], a, b)
        return self._gate(name, x, gate, cond)


class Decoder(Layers):
    """PixelCNN++'s layers run a row (u stream) or a position (ul stream) at a time.

    Besides the layers' maps the state keeps the u stream's current row at each
    resolution that the ul stream reads (keys "u/...").
    """

    def __init__(self, model, params, labels, batch, build=False):
        super().__init__(model, params, labels, batch, build)
        self.up, self.down = self.names["up"], self.names["down"]
        height, width, _ = model.event_shape
        self.sizes = [(height >> level, width >> level) for level in range(model.num_resolutions)]

    # -- u stream: rows --------------------------------------------------------------------

    def start_row(self, s, x_map, i):
        """Computes every u row that becomes final at image row i."""
        s = dict(s)
        s["image"] = x_map
        r = jnp.maximum(i - 1, 0)
        row = self.conv_row(s, "image", U_IN, self.params[self.names["u_in"]], r, IMAGE)
        u0 = jnp.where(i > 0, row, 0.0)  # layers.down_shift
        s = self._u_level(s, 0, i, u0)
        del s["image"]
        return s

    def _u_level(self, s, level, a, u):
        """Row a of resolution `level`: up pass, the lower resolutions, down pass."""
        nr, res = self.model.num_resnets, self.model.num_resolutions
        up, down, size = self.up[level], self.down[level], self.sizes[level]
        entries = [u]
        for k, name in enumerate(up["u_res"]):
            u = self.resnet_row(s, name, size, u, None, a)
            s[f"u/up{level}/{k}"] = u
            entries.append(u)
        if level + 1 < res:
            conv = self.up[level + 1]["u_conv"]
            self.write_row(s, conv, DOWN_STRIDE2, size, u, a)

            def lower(s):
                s = dict(s)
                row = self.conv_row(s, conv, DOWN_STRIDE2, self.params[conv], a // 2)
                return self._u_level(s, level + 1, a // 2, row)

            s = self.when(a % 2 == 0, lower, s)
            u = self.conv_row(s, down["u_conv"], DOWN_TRANSPOSE, self.params[down["u_conv"]], a)
            auxes = entries[::-1]
        else:
            u, auxes = entries[-1], entries[-2::-1]
        for m, name in enumerate(down["u_res"]):
            u = self.resnet_row(s, name, size, u, auxes[m], a)
            s[f"u/down{level}/{m}"] = u
        if level > 0:
            conv = self.down[level - 1]["u_conv"]
            self.write_row(s, conv, DOWN_TRANSPOSE, size, u, a)
        assert len(auxes) == len(down["u_res"]) == nr + (level + 1 < res)
        return s

    # -- ul stream: positions --------------------------------------------------------------

    def pixel(self, s, x_map, i, j):
        """Mixture parameters `[B, 1, 1, F]` of pixel (i, j), computing every ul position
        that becomes final there."""
        ul = self.up_left(x_map, i, j)
        s, ul = self._ul_level(dict(s), 0, i, j, ul)
        out = sl.wn_dense(self.params[self.names["out"]], jax.nn.elu(ul))
        return out, s

    def _ul_level(self, s, level, a, b, ul):
        res = self.model.num_resolutions
        up, down, size = self.up[level], self.down[level], self.sizes[level]

        def u_at(key):
            return jax.lax.dynamic_slice_in_dim(s[key], b, 1, axis=2)

        entries = [ul]
        for k, name in enumerate(up["ul_res"]):
            ul = self.resnet_pos(s, name, size, ul, u_at(f"u/up{level}/{k}"), a, b)
            entries.append(ul)
        if level + 1 < res:
            conv = self.up[level + 1]["ul_conv"]
            self.write_pos(s, conv, DOWN_RIGHT_STRIDE2, size, ul, a, b)

            def lower(s):
                s = dict(s)
                pos = self.conv_pos(s, conv, DOWN_RIGHT_STRIDE2, self.params[conv], a // 2, b // 2)
                return self._ul_level(s, level + 1, a // 2, b // 2, pos)[0]

            s = self.when((a % 2 == 0) & (b % 2 == 0), lower, s)
            p = self.params[down["ul_conv"]]
            ul = self.conv_pos(s, down["ul_conv"], DOWN_RIGHT_TRANSPOSE, p, a, b)
            auxes = entries[::-1]
        else:
            ul, auxes = entries[-1], entries[-2::-1]
        for m, name in enumerate(down["ul_res"]):
            skip = jnp.concatenate([u_at(f"u/down{level}/{m}"), auxes[m]], axis=-1)
            ul = self.resnet_pos(s, name, size, ul, skip, a, b)
        if level > 0:
            conv = self.down[level - 1]["ul_conv"]
            self.write_pos(s, conv, DOWN_RIGHT_TRANSPOSE, size, ul, a, b)
        return s, ul


def image_map(model, x_BHWC):
    """x in [-1, 1] with its channel of ones (`sl.pixel_inputs`), zero-padded as `IMAGE`."""
    _, x_pad = sl.pixel_inputs(x_BHWC, model.num_levels)
    return pad_image(x_pad)


def pad_image(x_pad_BHWC):
    """The image map of the network's input (with its channel of ones): padded as `IMAGE`."""
    return jnp.pad(x_pad_BHWC, ((0, 0), *IMAGE.padding, (0, 0)))


def decoder(model, variables, labels, cond, batch):
    """The `base.Decoder` of a `PixelCNNPP`: one call per pixel (its output does not see
    the pixel), u rows at the start of each row."""
    del cond
    params = variables["params"]
    x_BHWC = jnp.zeros((batch, *model.event_shape), jnp.int32)

    def start_row(state, x_BHWC, i):
        decoder = Decoder(model, params, labels, batch)
        return decoder.start_row(state, image_map(model, x_BHWC), i)

    def pixel_params(state, x_BHWC, i, j):
        decoder = Decoder(model, params, labels, batch)
        return decoder.pixel(state, image_map(model, x_BHWC), i, j)

    def build():
        decoder = Decoder(model, params, labels, batch, build=True)
        x_map = image_map(model, x_BHWC)
        state = decoder.start_row({}, x_map, 0)
        return decoder.pixel(state, x_map, 0, 0)[1]

    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(build))
    return decoding.pixel_decoder(model, state, pixel_params, start_row, per_pixel=True)

"""PixelCNN++ (Salimans et al., 2017).

Two streams of shifted convolutions replace masks: `u` sees the rows above a
pixel, `ul` the rows above and the pixels to its left. Both go through gated
resnet blocks (concat_elu, dropout, weight norm with data-dependent init) at
`num_resolutions` resolutions, halved by stride-2 shifted convolutions on the
way up and doubled by shifted transposed convolutions on the way down; every
down-pass block takes the matching up-pass output as a skip input (U-Net
shortcuts). The network output at a pixel sees only earlier pixels; the
channels of a pixel are coupled by the discretized logistic mixture (G's
mean moves with R, B's with R and G), so the per-sub-pixel factorization
that `jaxar.log_prob` reports is exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxar import distributions
from jaxar.models import base, configs, decoding, released
from jaxar.nn import cache, fast_conv, layers
from jaxar.nn import shifted_layers as sl


class PixelCNNPP(base.Model):
    event_shape: tuple[int, int, int]
    num_levels: int
    features: int = 160
    num_resnets: int = 5
    num_resolutions: int = 3
    num_mixtures: int = 10
    dropout_rate: float = 0.5
    num_classes: int = 0
    conv_impl: str = "auto"
    # False: log-scales clipped below only (at -7), as the released code's likelihood.
    clip_high_log_scales: bool = True

    @property
    def likelihood(self):
        return distributions.make_likelihood(
            "dmol", self.num_levels, self.num_mixtures, self.event_shape[-1],
            distributions.DiscretizedLogisticMixture.max_log_scale
            if self.clip_high_log_scales else float("inf"),
        )

    @nn.nowrap
    def layer_names(self) -> dict:
        """The name of every layer, by role: the one table `setup` names its layers from.

        {"u_in", "ul_above", "ul_left", "out"} and, per resolution l (the image halved
        l times), `up[l]` / `down[l]`: "u_res" / "ul_res" (the gated resnets of the up
        and down passes, in order) and "u_conv" / "ul_conv" (the stride-2 layer into l
        on the way up, l > 0; the transposed one into l on the way down, l < last).
        Names: `u_in`, `up1_u_conv`, `up0_ul_res2`, `down0_ul_conv`, `down1_u_res0`, ...
        """
        res, nr = self.num_resolutions, self.num_resnets

        def level(where, lvl, num_resnets, has_conv):
            names = {f"{s}_res": [f"{where}{lvl}_{s}_res{k}" for k in range(num_resnets)]
                     for s in ("u", "ul")}
            if has_conv:
                names.update(u_conv=f"{where}{lvl}_u_conv", ul_conv=f"{where}{lvl}_ul_conv")
            return names

        return {
            "u_in": "u_in", "ul_above": "ul_above", "ul_left": "ul_left", "out": "out",
            "up": [level("up", lvl, nr, lvl > 0) for lvl in range(res)],
            "down": [level("down", lvl, nr + (lvl < res - 1), lvl < res - 1)
                     for lvl in range(res)],
        }

    @nn.nowrap
    def released_layers(self) -> list[released.Layer]:
        """The layers in the order openai/pixel-cnn's `model_spec` creates them
        (`jaxar.models.released`): its `conv2d_k` / `deconv2d_k` / `dense_k` variables.

        The original has 3 resolutions and no class conditioning; each gated resnet
        creates conv_in, aux_in (with a skip input) and gate_out in that order; the
        up pass alternates u and ul resnets, the down pass too.
        """
        if self.num_resolutions != 3 or self.num_classes or self.event_shape[-1] != 3:
            raise ValueError(
                "the released PixelCNN++ has model.num_resolutions=3, no classes and RGB "
                f"images; this config has {self.num_resolutions}, {self.num_classes}, "
                f"{self.event_shape[-1]} channel(s)")
        names = self.layer_names()
        conv = lambda name: released.Layer((name,), "conv2d")
        layers = [conv(names["u_in"]), conv(names["ul_above"]), conv(names["ul_left"])]

        def resnet(name, kind, aux):
            subs = [("conv_in", kind)] + [("aux_in", "dense")] * aux + [("gate_out", kind)]
            return [released.Layer((name, sub), k) for sub, k in subs]

        for level, up in enumerate(names["up"]):
            if level:
                layers += [conv(up["u_conv"]), conv(up["ul_conv"])]
            for u_name, ul_name in zip(up["u_res"], up["ul_res"], strict=True):
                layers += resnet(u_name, "conv2d", False) + resnet(ul_name, "conv2d", True)
        for level in reversed(range(self.num_resolutions)):
            down = names["down"][level]
            if "u_conv" in down:
                layers += [released.Layer((down["u_conv"],), "deconv2d"),
                           released.Layer((down["ul_conv"],), "deconv2d")]
            for u_name, ul_name in zip(down["u_res"], down["ul_res"], strict=True):
                layers += resnet(u_name, "conv2d", True) + resnet(ul_name, "conv2d", True)
        order = released.original_dmol_order(self.num_mixtures)
        return layers + [released.Layer((names["out"],), "dense", order)]

    def setup(self):
        # Every layer an attribute named as `layer_names` names it (its parameters' names).
        names, f, impl = self.layer_names(), self.features, self.conv_impl
        resnet = lambda conv: sl.GatedResnet(conv, self.dropout_rate, conv_impl=impl)
        modules = {
            names["u_in"]: sl.WNConv(f, sl.down_geometry(), conv_impl=impl, shift=(1, 0),
                                     decode_rows=True),  # `layers.down_shift` built in
            names["out"]: sl.WNDense(self.likelihood.num_params()),
        }
        modules.update(zip((names["ul_above"], names["ul_left"]), sl.up_left_layers(f, impl),
                           strict=True))
        for level, (up, down) in enumerate(zip(names["up"], names["down"], strict=True)):
            if level:
                modules[up["u_conv"]] = sl.down_shifted_conv(f, strides=2)
                modules[up["ul_conv"]] = sl.down_right_shifted_conv(f, strides=2)
            if "u_conv" in down:
                modules[down["u_conv"]] = sl.down_shifted_conv_transpose(f)
                modules[down["ul_conv"]] = sl.down_right_shifted_conv_transpose(f)
            for stage in (up, down):
                modules.update((name, resnet("down")) for name in stage["u_res"])
                modules.update((name, resnet("down_right")) for name in stage["ul_res"])
        for name, module in modules.items():
            setattr(self, name, module)

    def _layer(self, name):
        return getattr(self, name)

    def __call__(self, x, labels=None, cond=None, train: bool = False):
        """Mixture parameters `[B, H, W, F]`, one vector per pixel."""
        del cond
        names = self.layer_names()
        _, x_pad = sl.pixel_inputs(x, self.num_levels)
        u_list = [self._layer(names["u_in"])(x_pad)]
        ul_list = [self.up_left(x_pad)]
        for level, up in enumerate(names["up"]):
            if level:
                u_list.append(self._layer(up["u_conv"])(u_list[-1]))
                ul_list.append(self._layer(up["ul_conv"])(ul_list[-1]))
            for u_name, ul_name in zip(up["u_res"], up["ul_res"], strict=True):
                u_list.append(self._layer(u_name)(u_list[-1], None, self._labels(labels), train))
                ul_list.append(self._layer(ul_name)(ul_list[-1], u_list[-1],
                                                    self._labels(labels), train))
        u, ul = u_list.pop(), ul_list.pop()
        for level in reversed(range(self.num_resolutions)):
            down = names["down"][level]
            if "u_conv" in down:
                u, ul = self._layer(down["u_conv"])(u), self._layer(down["ul_conv"])(ul)
            for u_name, ul_name in zip(down["u_res"], down["ul_res"], strict=True):
                u = self._layer(u_name)(u, u_list.pop(), self._labels(labels), train)
                skip = jnp.concatenate([u, ul_list.pop()], axis=-1)
                ul = self._layer(ul_name)(ul, skip, self._labels(labels), train)
        assert not u_list and not ul_list  # every up-pass output fed one down-pass resnet
        return self.output(ul)

    def _labels(self, labels):
        return layers.one_hot_labels(labels, self.num_classes)

    def up_left(self, x_pad):
        """The ul stream's input (`sl.up_left_stream`) from the image with its channel of
        ones."""
        names = self.layer_names()
        return self._layer(names["ul_above"])(x_pad) + self._layer(names["ul_left"])(x_pad)

    def u_input(self, x_pad):
        """The u stream's input: the rows above, down-shifted."""
        return self._layer(self.layer_names()["u_in"])(x_pad)

    def output(self, ul):
        return self._layer(self.layer_names()["out"])(jax.nn.elu(ul))

    # -- decoding: the passes of one resolution, on the cache's row or position -----------

    def up_pass(self, level: int, stream: str, h, auxes, labels):
        """Resolution `level`'s up-pass resnets of `stream` ("u" or "ul"; ul reads `auxes`,
        the u stream there): every output, the input first; the last written into the
        stride-2 layer to the next resolution."""
        names = self.layer_names()
        entries = [h]
        for k, name in enumerate(names["up"][level][f"{stream}_res"]):
            h = self._layer(name)(h, None if auxes is None else auxes[k], self._labels(labels))
            entries.append(h)
        if level + 1 < self.num_resolutions:
            self._layer(names["up"][level + 1][f"{stream}_conv"])(h, output=False)
        return entries

    def downsampled(self, level: int, stream: str):
        """The stride-2 layer into resolution `level` at its output's position."""
        return self._layer(self.layer_names()["up"][level][f"{stream}_conv"])(None)

    def down_pass(self, level: int, stream: str, entries, u_rows, labels):
        """Resolution `level`'s down-pass resnets of `stream` on its up pass's `entries`
        (after the upsampled lower resolution, if any); ul reads `u_rows`, the u stream's
        down-pass outputs there. Every output; the last written into the transposed layer
        to the resolution above."""
        names = self.layer_names()
        down = names["down"][level]
        if "u_conv" in down:
            h, auxes = self._layer(down[f"{stream}_conv"])(None), entries[::-1]
        else:
            h, auxes = entries[-1], entries[-2::-1]
        outputs = []
        for m, name in enumerate(down[f"{stream}_res"]):
            aux = auxes[m] if stream == "u" else jnp.concatenate([u_rows[m], auxes[m]], -1)
            h = self._layer(name)(h, aux, self._labels(labels))
            outputs.append(h)
        if level:
            self._layer(names["down"][level - 1][f"{stream}_conv"])(h, output=False)
        return outputs

    @nn.nowrap
    def decoder(self, variables, labels, cond, batch):
        """Each activation computed once, when its position is reached: u rows per image
        row, ul positions per pixel, resolution l on a 4^-l share of them
        (`jaxar.models.pixelcnn_pp.Decoding`)."""
        return Decoding(self, variables, labels, batch).decoder(cond)


class Decoding:
    """PixelCNN++ decoded by its own layers, under `jaxar.nn.cache`.

    PixelCNN++'s `u` stream at row i of the image sees only rows < i, and its `ul`
    stream at pixel (i, j) only the pixels before (i, j); at resolution l (the image
    halved l times) position (a, b) sees only what full-resolution position (2^l a,
    2^l b) sees: the stride-2 layers read rows 2a - 1 .. 2a (and columns up to 2b), the
    transposed ones map (r, c) back to (r // 2, c // 2). So every activation is final,
    and computed exactly once, at the raster step where its position is reached:

    * at the start of image row i, each resolution l with 2^l | i computes row i / 2^l
      of every u layer (up pass, then the lower resolutions, then down pass);
    * at pixel (i, j), each resolution l with 2^l | i and 2^l | j computes position
      (i / 2^l, j / 2^l) of every ul layer. Resolution 0 runs at every pixel,
      resolution l on a 4^-l share of them (`lax.cond`).

    State: a flat dict, each layer's cache (key: its name) and the u rows the ul stream
    reads (keys "u/..."). Each pass is one `apply` of a `PixelCNNPP` method on the caches
    of the layers it runs, their positions set to its row or position; only what a
    resolution's pass changes goes through its `lax.cond`. The network output at a pixel
    does not see the pixel: one call per pixel draws all its channels.
    """

    def __init__(self, model, variables, labels, batch):
        self.model, self.variables, self.labels, self.batch = model, variables, labels, batch
        self.names = model.layer_names()

    def _apply(self, state, layer_names, a, b, method, *args):
        """`model.method(*args)` with the caches of `layer_names` at (a, b): its result and
        the state with their updated caches."""
        before = {name: state[name] for name in layer_names}
        out, updates = self.model.apply({**self.variables, "cache": cache.at(before, a, b)},
                                        *args, method=method, mutable=["cache"])
        # Positions are set before every pass: the state keeps the old ones, so that no
        # position goes through a `lax.cond`.
        old = traverse_util.flatten_dict(before)
        new = {path: old[path] if path[-1] == "position" else leaf
               for path, leaf in traverse_util.flatten_dict(updates.get("cache", {})).items()}
        return out, {**state, **traverse_util.unflatten_dict(new)}

    def _conv_names(self, level, stream):
        """The convolutions of `stream` at resolution `level`: up-pass resnets and the
        stride-2 layer out of it; transposed layer into it, down-pass resnets and the
        transposed layer out of it."""
        up, down, res = self.names["up"], self.names["down"], self.model.num_resolutions
        first = list(up[level][f"{stream}_res"])
        if level + 1 < res:
            first.append(up[level + 1][f"{stream}_conv"])
        second = list(down[level][f"{stream}_res"])
        if level + 1 < res:
            second.insert(0, down[level][f"{stream}_conv"])
        if level:
            second.append(down[level - 1][f"{stream}_conv"])
        return first, second

    def _level(self, s, level, stream, a, b, h):
        """Resolution `level` of `stream` at row a (u, b = 0) or position (a, b) (ul):
        up pass, the lower resolutions (when a and b are even), down pass."""
        model, m = self.model, PixelCNNPP
        first, second = self._conv_names(level, stream)
        column = (lambda row: row) if stream == "u" else (
            lambda row: jax.lax.dynamic_slice_in_dim(row, b, 1, axis=2))
        u_up = None if stream == "u" else [column(s[f"u/up{level}/{k}"])
                                           for k in range(model.num_resnets)]
        entries, s = self._apply(s, first, a, b, m.up_pass, level, stream, h, u_up, self.labels)
        if stream == "u":
            s.update({f"u/up{level}/{k}": row for k, row in enumerate(entries[1:])})
        if level + 1 < model.num_resolutions:
            conv = self.names["up"][level + 1][f"{stream}_conv"]

            def lower(s):
                h, s = self._apply(s, [conv], a, b, m.downsampled, level + 1, stream)
                return self._level(s, level + 1, stream, a // 2, b // 2, h)[0]

            even = a % 2 == 0 if stream == "u" else (a % 2 == 0) & (b % 2 == 0)
            s = when(even, lower, s)
        count = len(self.names["down"][level][f"{stream}_res"])
        u_down = None if stream == "u" else [column(s[f"u/down{level}/{k}"])
                                             for k in range(count)]
        outputs, s = self._apply(s, second, a, b, m.down_pass, level, stream, entries, u_down,
                                 self.labels)
        if stream == "u":
            s.update({f"u/down{level}/{k}": row for k, row in enumerate(outputs)})
        return s, outputs[-1]

    def _x_pad(self, x_BHWC):
        return sl.pixel_inputs(x_BHWC, self.model.num_levels)[1]

    def start_row(self, s, x_BHWC, i):
        """Every u row that becomes final at image row i."""
        u_in = self.names["u_in"]
        u, s = self._apply(s, [u_in], i, 0, PixelCNNPP.u_input, self._x_pad(x_BHWC))
        return self._level(s, 0, "u", i, 0, u)[0]

    def pixel(self, s, x_BHWC, i, j):
        """Mixture parameters `[B, 1, 1, F]` of pixel (i, j), computing every ul position
        that becomes final there."""
        inputs = [self.names["ul_above"], self.names["ul_left"]]
        ul, s = self._apply(s, inputs, i, j, PixelCNNPP.up_left, self._x_pad(x_BHWC))
        s, ul = self._level(s, 0, "ul", i, j, ul)
        out, _ = self._apply(s, [], i, j, PixelCNNPP.output, ul)
        return out, s

    def decoder(self, cond):
        x_BHWC = jnp.zeros((self.batch, *self.model.event_shape), jnp.int32)
        caches = cache.init(self.model, self.variables, x_BHWC, self.labels, cond)

        def build(caches):  # the u rows' shapes: one row's pass
            return self.start_row(dict(caches), x_BHWC, 0)

        state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                             jax.eval_shape(build, caches))
        return decoding.pixel_decoder(self.model, state, self.pixel, self.start_row,
                                      per_pixel=True)


def when(pred, fn, s: dict) -> dict:
    """`fn(s)` if pred else s; only the arrays fn changes go through the `lax.cond` (the
    rest is read-only there), so that no unchanged cache is copied."""
    flat = traverse_util.flatten_dict(s)
    changed = []

    def probe(s):
        before = traverse_util.flatten_dict(s)
        out = traverse_util.flatten_dict(fn(dict(s)))
        changed.extend(k for k in out if k not in before or out[k] is not before[k])
        return 0

    jax.eval_shape(probe, s)
    if any(k not in flat for k in changed):  # tracing for the state's shapes: every entry
        return fn(s)

    def run(sub):
        out = traverse_util.flatten_dict(fn(traverse_util.unflatten_dict({**flat, **sub})))
        return {k: out[k] for k in changed}

    sub = jax.lax.cond(pred, run, lambda sub: sub, {k: flat[k] for k in changed})
    return traverse_util.unflatten_dict({**flat, **sub})


def check_config(f: dict, given: frozenset) -> None:
    """PixelCNN++'s value checks on the resolved fields (`jaxar.models.configs`)."""
    del given
    shape, num_resolutions = f["event_shape"], f["num_resolutions"]
    factor = 2 ** (num_resolutions - 1)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(
            f"model.num_resolutions={num_resolutions} halves the image {num_resolutions - 1} "
            f"times: data.shape {shape} needs height and width divisible by {factor}"
        )
    sl.check_dropout_rate(f["dropout_rate"])
    fast_conv.check_impl(f["conv_impl"])


configs.register(PixelCNNPP, configs.Spec(
    event_ndim=3,
    fixed={"likelihood": "dmol"},  # a discretized logistic mixture only
    positive=("features", "num_resolutions", "num_mixtures"),
    check=check_config,
))

"""jaxar's train steps vs the same networks in PyTorch, in one process: PixelCNN, PixelCNN++.

  python benchmarks/torch_reference.py               # needs torch (docs/benchmarks.md)
  python benchmarks/torch_reference.py --models pixelcnn_pp_default --rounds 20 --threads 2
  python benchmarks/torch_reference.py --out torch_reference.json

`--models` (comma-separated, default all of `MODELS`):

- `pixelcnn`: `experiments/pixelcnn_mnist.py:seed` (mask-A 7x7 1->64, three mask-B
  7x7 64->64, mask-B 7x7 64->1, ReLU, Bernoulli logits), a random binary batch of 128
  28x28 images, mean bits/dim and Adam, jitted in jaxar for `conv_impl` "auto" and
  "plain"; PyTorch runs the usual masked `nn.Conv2d` (weight times mask every forward).
- `pixelcnn_pp_default`, `pixelcnn_pp_paper`: PixelCNN++ at `PP_CONFIGS`' sizes on one
  random CIFAR-shaped batch (32x32x3, 256 levels), float32, dropout 0.5. jaxar runs the
  trainer's own jitted step (`jaxar.training.train.Trainer.train_step`, built and
  compiled ahead of time by benchmarks/common.py's `build` and `compile_step`:
  loss, gradient, clipping if the config has it, Adam with the config's betas and
  learning-rate decay, EMA), for `model.conv_impl` "plain" (XLA's convolutions) and
  "im2col" (`jaxar.nn.fast_conv`'s gathered gradients); the title names the one "auto"
  picks on this CPU (`fast_conv.resolve_impl`). PyTorch runs `PixelCNNPP` below,
  written from the paper (Salimans et al., 2017) with the same layers, kernel sizes and
  skip connections as `jaxar.models.pixelcnn_pp` (its parameter count is checked equal
  to jaxar's before timing), weight-normalized with data-dependent init on the same
  init batch, and the same optimizer, decay and average.

Each model's steps (one per implementation) run once (warm-up; jaxar's is compiled
before, timed apart), then in turn for `--rounds` rounds, so load from other processes
hits all alike; the medians are compared. torch uses `--threads` intra-op threads
(default: the machine's cores, as XLA uses). Both losses are printed at the first and
last step: at random init both PixelCNN++ start at about 9.5-9.6 bits/dim (a uniform
model: 8) and go down alike. torch is not a jaxar dependency: without it this prints
that it was skipped. `--out FILE` writes the figures as JSON (benchmarks/common.py's header
first, torch's version and threads beside it).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

import jax
import numpy as np
import optax

try:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812 (PyTorch's own spelling)
    from torch.nn.utils.parametrizations import weight_norm
except ImportError:  # not a jaxar dependency: main() says the run was skipped
    torch = None

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402
from benchmarks.common import (  # noqa: E402
    pp_batch_and_config,
    pp_jax_step,
    report,
    time_interleaved,
)
from jaxar import models as models_lib  # noqa: E402
from jaxar.models import common  # noqa: E402
from jaxar.nn import fast_conv  # noqa: E402

SEED_SPEC = "experiments/pixelcnn_mnist.py:seed"
# name: (config, batch size)
PP_CONFIGS = {
    "pixelcnn_pp_default": ("experiments/pixelcnn_pp_cifar10.py:default", 16),
    "pixelcnn_pp_paper": ("experiments/pixelcnn_pp_cifar10.py:paper", 4),
}
MODELS = ("pixelcnn", *PP_CONFIGS)
Module = nn.Module if torch is not None else object  # the classes below need torch to run


# --- the seed PixelCNN -----------------------------------------------------------------


def seed_jax_step(impl: str, batch_NHWC: np.ndarray):
    """A step of the seed PixelCNN in jaxar (mean bits/dim, Adam, jitted); returns its loss."""
    cfg = jaxar.load_config(str(ROOT / SEED_SPEC))
    cfg.model.conv_impl = impl
    model = jaxar.build_model(cfg)
    params = jaxar.init_variables(model, cfg, jax.random.key(0), x=batch_NHWC[:16])["params"]
    optimizer = optax.adam(cfg.train.learning_rate)

    def loss_fn(params, x):
        lp = models_lib.apply_log_prob(model, {"params": params}, x, None, None)
        nll = -lp.reshape(lp.shape[0], -1).sum(-1)
        return models_lib.nats_to_bits_per_dim(nll, model.event_shape).mean()

    @jax.jit
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = (params, optimizer.init(params))

    def run():
        nonlocal state
        *state, loss = step(*state, batch_NHWC)
        return float(loss)

    return run


class MaskedConv(Module):
    """A 7x7 `nn.Conv2d` whose kernel is multiplied by a PixelCNN mask ("A" or "B")."""

    def __init__(self, mask_type: str, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 7, padding=3)
        mask = torch.ones_like(self.conv.weight)
        mask[:, :, 3, 3 + (mask_type == "B"):] = 0
        mask[:, :, 4:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.conv.weight * self.mask, self.conv.bias, padding=3)


def seed_torch_step(batch_NHWC: np.ndarray):
    """The seed PixelCNN's step in PyTorch: masked convolutions, BCE-with-logits, Adam."""
    net = nn.Sequential(
        MaskedConv("A", 1, 64), nn.ReLU(),
        *[m for _ in range(3) for m in (MaskedConv("B", 64, 64), nn.ReLU())],
        MaskedConv("B", 64, 1),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    x = torch.from_numpy(batch_NHWC.transpose(0, 3, 1, 2).astype(np.float32))
    inputs = 2 * x - 1  # jaxar feeds pixels scaled to [-1, 1] too

    def step():
        optimizer.zero_grad()
        logits = net(inputs)
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        loss = loss / (x.numel() * math.log(2))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# --- PixelCNN++ in PyTorch (Salimans et al., 2017), NCHW ----------------------------------


def standard_normal(layer):
    """`layer` with N(0, 1) weights: weight norm's v, as jaxar draws it. Adam moves every
    element of v by about the learning rate, so v's scale sets how fast its direction
    turns (PyTorch's default init, about 1 / sqrt(fan_in), would turn it far faster)."""
    nn.init.normal_(layer.weight)
    return layer


class WNConv2d(Module):
    """A weight-normalized convolution (`weight = g v / ||v||`, the norm over every axis
    but the output one, plus a bias) of its input zero-padded by `pad` (left, right, top,
    bottom). `init_from_data` sets g and the bias so that its outputs start with zero
    mean and std `init_scale` on a batch."""

    def __init__(self, c_in, c_out, kernel, pad=(0, 0, 0, 0), stride=1, init_scale=1.0):
        super().__init__()
        self.pad, self.init_scale = pad, init_scale
        self.conv = weight_norm(standard_normal(nn.Conv2d(c_in, c_out, kernel, stride)))

    def forward(self, x):
        return self.conv(F.pad(x, self.pad) if any(self.pad) else x)


class WNConvTranspose2d(Module):
    """A weight-normalized stride-2 transposed convolution cropped to twice its input's
    size: output row r reads the input rows i with r - k_h < 2i <= r, and the columns
    likewise (`down_right`) or centred. An input that only saw pixels above (and left
    of) its position then gives outputs that only see pixels above (and left of) theirs."""

    def __init__(self, c_in, c_out, kernel, down_right: bool):
        super().__init__()
        self.left = 0 if down_right else (kernel[1] - 1) // 2
        self.init_scale = 1.0
        self.conv = weight_norm(
            standard_normal(nn.ConvTranspose2d(c_in, c_out, kernel, stride=2)), dim=1)

    def forward(self, x):
        height, width = 2 * x.shape[2], 2 * x.shape[3]
        return self.conv(x)[:, :, :height, self.left:self.left + width]


def down_shifted(c_in, c_out, kernel=(2, 3), stride=1, init_scale=1.0):
    """Output (i, j) sees input rows i - k_h + 1 .. i, columns centred on j."""
    kh, kw = kernel
    pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)
    return WNConv2d(c_in, c_out, kernel, pad, stride, init_scale)


def down_right_shifted(c_in, c_out, kernel=(2, 2), stride=1, init_scale=1.0):
    """Output (i, j) sees input rows i - k_h + 1 .. i and columns j - k_w + 1 .. j."""
    kh, kw = kernel
    return WNConv2d(c_in, c_out, kernel, (kw - 1, 0, kh - 1, 0), stride, init_scale)


def nin(c_in, c_out, init_scale=1.0):
    """A weight-normalized 1x1 convolution ("network in network")."""
    return WNConv2d(c_in, c_out, 1, init_scale=init_scale)


def down_shift(x):
    """Every row one down (row 0 zeros): row i then sees only rows above i."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x):
    """Every column one right (column 0 zeros)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def concat_elu(x):
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(Module):
    """`x + a * sigmoid(b)`, `[a, b] = conv(dropout(f(conv(f(x)) + nin(f(aux)))))`,
    f = concat_elu; `conv` is `down_shifted` (2x3) or `down_right_shifted` (2x2). `aux`
    (`aux_channels` > 0) is a skip input; labels add a learned bias per class to both
    halves. The residual branch starts at std 0.1, so a deep stack starts near the
    identity."""

    def __init__(self, channels, conv, aux_channels=0, dropout_rate=0.5, num_classes=0):
        super().__init__()
        self.conv_in = conv(2 * channels, channels)
        self.aux_in = nin(2 * aux_channels, channels) if aux_channels else None
        self.dropout = nn.Dropout(dropout_rate)
        self.gate_out = conv(2 * channels, 2 * channels, init_scale=0.1)
        self.label_bias = None
        if num_classes:
            self.label_bias = nn.Embedding(num_classes, 2 * channels)
            nn.init.normal_(self.label_bias.weight, std=0.05)

    def forward(self, x, aux=None, labels=None):
        h = self.conv_in(concat_elu(x))
        if aux is not None:
            h = h + self.aux_in(concat_elu(aux))
        h = self.gate_out(self.dropout(concat_elu(h)))
        if labels is not None:
            h = h + self.label_bias(labels)[:, :, None, None]
        a, b = h.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class Level(Module):
    """One resolution of a pass: a resampling layer per stream (or none), then gated
    resnets, `u` (down-shifted) with `u_aux` skip channels, `ul` (down-right-shifted)
    with `ul_aux`."""

    def __init__(self, features, num_resnets, u_aux, ul_aux, resample=None, **resnet_kw):
        super().__init__()
        self.u_resample, self.ul_resample = resample or (None, None)
        self.u_res = nn.ModuleList(GatedResnet(features, down_shifted, u_aux, **resnet_kw)
                                   for _ in range(num_resnets))
        self.ul_res = nn.ModuleList(GatedResnet(features, down_right_shifted, ul_aux, **resnet_kw)
                                    for _ in range(num_resnets))


class PixelCNNPP(Module):
    """PixelCNN++: a `u` stream that sees the rows above a pixel and a `ul` stream that
    sees those and the pixels to its left, through gated resnets at `num_resolutions`
    resolutions (halved by stride-2 shifted convolutions on the way up, doubled by
    transposed ones on the way down); each down-pass resnet takes the matching up-pass
    output as a skip input (`ul` also takes the new `u`). Returns the discretized
    logistic mixture's parameters `[B, F, H, W]` (`dmol_nll`)."""

    def __init__(self, channels, features, num_resnets, num_resolutions, num_mixtures,
                 dropout_rate, num_classes):
        super().__init__()
        f, last = features, num_resolutions - 1
        kw = dict(dropout_rate=dropout_rate, num_classes=num_classes)
        self.u_in = down_shifted(channels + 1, f)  # + a channel of ones: image vs padding
        self.ul_above = down_shifted(channels + 1, f, (1, 3))
        self.ul_left = down_right_shifted(channels + 1, f, (2, 1))
        halve = lambda: (down_shifted(f, f, stride=2), down_right_shifted(f, f, stride=2))
        double = lambda: (WNConvTranspose2d(f, f, (2, 3), False),
                          WNConvTranspose2d(f, f, (2, 2), True))
        self.up = nn.ModuleList(Level(f, num_resnets, 0, f, halve() if level else None, **kw)
                                for level in range(num_resolutions))
        self.down = nn.ModuleList(  # coarsest first; every level but it starts by doubling
            Level(f, num_resnets + (level < last), f, 2 * f,
                  double() if level < last else None, **kw)
            for level in reversed(range(num_resolutions)))
        self.out = nin(f, num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2))

    def forward(self, x_unit, labels=None):
        x = torch.cat([x_unit, torch.ones_like(x_unit[:, :1])], dim=1)
        us = [down_shift(self.u_in(x))]
        uls = [down_shift(self.ul_above(x)) + right_shift(self.ul_left(x))]
        for level in self.up:
            if level.u_resample is not None:
                us.append(level.u_resample(us[-1]))
                uls.append(level.ul_resample(uls[-1]))
            for u_res, ul_res in zip(level.u_res, level.ul_res, strict=True):
                us.append(u_res(us[-1], None, labels))
                uls.append(ul_res(uls[-1], us[-1], labels))
        u, ul = us.pop(), uls.pop()
        for level in self.down:
            if level.u_resample is not None:
                u, ul = level.u_resample(u), level.ul_resample(ul)
            for u_res, ul_res in zip(level.u_res, level.ul_res, strict=True):
                u = u_res(u, us.pop(), labels)
                ul = ul_res(ul, torch.cat([u, uls.pop()], dim=1), labels)
        return self.out(F.elu(ul))


def dmol_nll(params_BFHW, x_BCHW, num_levels: int, num_mixtures: int):
    """-log p(x) in nats per image `[B]` under the discretized logistic mixture.

    Per pixel: K mixture logits, C*K means, C*K log-scales (clamped to [-7, 7]) and
    C(C-1)/2*K coupling coefficients (tanh) by which channel c's mean moves with every
    earlier channel's value (RGB: G's with R, B's with R and G). Value v is the bin of
    width 2 / (L - 1) around 2v / (L - 1) - 1; the end bins reach to -inf and +inf.
    """
    k, c = num_mixtures, x_BCHW.shape[1]
    params = params_BFHW.permute(0, 2, 3, 1)
    logits, means, log_scales, coeffs = params.split([k, c * k, c * k, c * (c - 1) // 2 * k], -1)
    means = means.unflatten(-1, (c, k))
    log_scales = log_scales.unflatten(-1, (c, k)).clamp(-7.0, 7.0)
    coeffs = torch.tanh(coeffs.unflatten(-1, (-1, k)))
    v = x_BCHW.permute(0, 2, 3, 1).unsqueeze(-1)  # [B, H, W, C, 1]
    x_unit = 2.0 * v / (num_levels - 1) - 1.0
    coupled, pair = [], 0
    for channel in range(c):
        mean = means[..., channel, :]
        for earlier in range(channel):
            mean = mean + coeffs[..., pair, :] * x_unit[..., earlier, :]
            pair += 1
        coupled.append(mean)
    inv_scale = torch.exp(-log_scales)
    half_bin = 1.0 / (num_levels - 1)
    centred = x_unit - torch.stack(coupled, dim=-2)
    log_below_upper = F.logsigmoid(inv_scale * (centred + half_bin))  # the left tail, v = 0
    log_above_lower = F.logsigmoid(-inv_scale * (centred - half_bin))  # the right tail
    # log(sigmoid(u) - sigmoid(l)) = log sigmoid(u) + log sigmoid(-l) + log(1 - e^(l - u)):
    # no difference of two nearly equal CDFs anywhere.
    log_bin = log_below_upper + log_above_lower + torch.log(-torch.expm1(-2 * half_bin * inv_scale))
    log_p = torch.where(v == 0, log_below_upper,
                        torch.where(v == num_levels - 1, log_above_lower, log_bin))
    log_pixel = torch.logsumexp(F.log_softmax(logits, dim=-1) + log_p.sum(-2), dim=-1)
    return -log_pixel.sum((1, 2))


def init_from_data(net, x_unit, labels=None) -> None:
    """Data-dependent init of weight norm: runs `net` on the batch once, and each
    weight-normalized layer, in the order the pass reaches it, gets the g and bias that
    make its outputs zero-mean with std `init_scale` on the batch (over all but the
    channel axis), given the already normalized layers before it."""
    layers = [m for m in net.modules() if isinstance(m, (WNConv2d, WNConvTranspose2d))]

    def normalize(layer, inputs, y):
        del inputs
        mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
        scale = layer.init_scale / torch.sqrt(var + 1e-6)
        layer.conv.parametrizations.weight.original0.copy_(
            scale.view_as(layer.conv.parametrizations.weight.original0))
        layer.conv.bias.copy_(-mean * scale)
        return (y - mean[:, None, None]) * scale[:, None, None]

    hooks = [layer.register_forward_hook(normalize) for layer in layers]
    net.eval()
    with torch.no_grad():
        for layer in layers:  # g = 1, bias 0: a layer outputs its convolution with v / ||v||
            layer.conv.parametrizations.weight.original0.fill_(1.0)
            layer.conv.bias.zero_()
        net(x_unit, labels)
    for hook in hooks:
        hook.remove()


# --- PixelCNN++ steps ------------------------------------------------------------------


def pp_torch_step(cfg, host_batch):
    """The PyTorch reference's step: mean bits/dim, backward, clipping if the config has
    it, Adam (the config's betas), the learning rate decayed per step, and the parameters'
    moving average warmed up as jaxar's. Returns (step returning the loss, parameter count)."""
    m, t = cfg.model, cfg.train
    torch.manual_seed(cfg.seed)
    x = torch.tensor(host_batch["x"]).permute(0, 3, 1, 2).float()
    x_unit = 2.0 * x / (cfg.data.num_levels - 1) - 1.0
    labels = torch.tensor(host_batch["labels"]).long() if m.num_classes else None
    net = PixelCNNPP(x.shape[1], m.features, m.num_resnets, m.num_resolutions,
                     m.num_mixtures, m.dropout_rate, m.num_classes)
    n = t.init_batch_size
    init_from_data(net, x_unit[:n], None if labels is None else labels[:n])
    params = list(net.parameters())
    optimizer = torch.optim.Adam(params, lr=t.learning_rate, betas=(t.b1, t.b2), fused=True)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, t.lr_decay)
    average = [p.detach().clone() for p in params]
    dims = math.prod(x.shape[1:])
    done = 0

    def step():
        nonlocal done
        net.train()
        optimizer.zero_grad()
        nll = dmol_nll(net(x_unit, labels), x, cfg.data.num_levels, m.num_mixtures)
        loss = (nll / (dims * math.log(2))).mean()
        loss.backward()
        if t.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        schedule.step()
        decay = min(t.ema_decay, (1 + done) / (10 + done))
        with torch.no_grad():
            torch._foreach_lerp_(average, params, 1 - decay)
        done += 1
        return loss.item()

    return step, sum(p.numel() for p in params)


# --- timing ------------------------------------------------------------------------------


def figures(timed: dict, batch_size: int) -> dict:
    """Per step: the timed seconds, median s/step and images/s, first step and losses."""
    return {name: {**r, "median_s": float(np.median(r["seconds"])),
                   "images_per_s": batch_size / float(np.median(r["seconds"]))}
            for name, r in timed.items()}


def run_seed(rounds: int) -> dict:
    batch = np.random.default_rng(0).integers(0, 2, (128, 28, 28, 1)).astype(np.int32)
    with common.rng_context():
        steps = {f"jaxar {impl}": seed_jax_step(impl, batch) for impl in ("auto", "plain")}
    steps["torch"] = seed_torch_step(batch)
    with common.rng_context():
        timed = time_interleaved(steps, rounds)
    report(f"pixelcnn: {SEED_SPEC}, batch 128", 128, timed,
           [("jaxar auto", "torch"), ("jaxar plain", "torch"), ("jaxar auto", "jaxar plain")])
    return {"config": SEED_SPEC, "batch": 128, "steps": figures(timed, 128)}


def run_pp(name: str, rounds: int) -> dict:
    spec, batch_size = PP_CONFIGS[name]
    steps, compile_s = {}, {}
    for impl in ("plain", "im2col"):  # the same batch: the configs differ in conv_impl only
        cfg, host_batch = pp_batch_and_config(spec, batch_size, impl)
        with common.rng_context():
            steps[f"jaxar {impl}"], compile_s[impl], jax_params = pp_jax_step(cfg, host_batch)
    steps["torch"], torch_params = pp_torch_step(cfg, host_batch)
    if torch_params != jax_params:
        raise AssertionError(f"{name}: PyTorch has {torch_params:,} parameters, "
                             f"jaxar {jax_params:,}")
    with common.rng_context():
        timed = time_interleaved(steps, rounds)
    compiles = ", ".join(f"{impl} {s:.1f} s" for impl, s in compile_s.items())
    auto = fast_conv.resolve_impl("auto", shifted=True)
    report(f"{name}: {spec}, batch {batch_size}, {jax_params:,} parameters (jaxar and torch); "
           f"jaxar compile {compiles}; auto here: {auto}", batch_size, timed,
           [("jaxar plain", "torch"), ("jaxar im2col", "torch"), ("jaxar im2col", "jaxar plain")])
    return {"config": spec, "batch": batch_size, "parameters": jax_params, "auto": auto,
            "compile_s": compile_s, "steps": figures(timed, batch_size)}


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="PyTorch intra-op threads")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    header = bench.run_header(__file__, argv, args.out)
    if torch is None:
        print("torch is not installed: skipped (docs/benchmarks.md)")
        return None
    torch.set_num_threads(args.threads)
    bench.log(f"{bench.machine()}, torch {torch.__version__} ({args.threads} threads), "
              f"{args.rounds} rounds")
    report = {"torch_version": torch.__version__, "torch_threads": args.threads,
              "rounds": args.rounds, "models": {}}
    for name in names:
        report["models"][name] = run_seed(args.rounds) if name == "pixelcnn" \
            else run_pp(name, args.rounds)
        if args.out:
            bench.write_json(args.out, report, header)
    return report


if __name__ == "__main__":
    main()

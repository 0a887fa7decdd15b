"""The seed survey's PixelCNN train step in jaxar (fast and plain paths) vs PyTorch, one run.

  python benchmarks/torch_reference.py               # needs torch: pip install torch
  python benchmarks/torch_reference.py --rounds 5 --threads 2

The network is `experiments/pixelcnn_mnist.py:seed` (mask-A 7x7 1->64, three
mask-B 7x7 64->64, mask-B 7x7 64->1, ReLU, Bernoulli logits), trained with Adam
on a random binary batch of 128 28x28 images. PyTorch runs the usual masked
`nn.Conv2d` (weight times mask in every forward), with `--threads` intra-op
threads (default: the machine's cores, as XLA uses). Steps of the three
implementations are interleaved for `--rounds` rounds, so load from other
processes hits all alike; medians are compared. torch is not a jaxar
dependency: without it this prints that it was skipped.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

import jax
import numpy as np
import optax

import jaxar
from jaxar import models as models_lib
from jaxar.models import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = "experiments/pixelcnn_mnist.py:seed"


def jax_step(impl: str, batch_NHWC: np.ndarray):
    """A jitted jaxar train step (mean bits/dim, Adam) and its initial (params, opt_state)."""
    cfg = jaxar.load_config(str(ROOT / SPEC))
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
    return lambda: jax.block_until_ready(step(*state, batch_NHWC)), state


def torch_step(torch, batch_NHWC: np.ndarray):
    """The same network and step in PyTorch: masked Conv2d layers, BCE-with-logits, Adam."""
    nn = torch.nn

    class MaskedConv(nn.Conv2d):
        def __init__(self, mask_type, c_in, c_out):
            super().__init__(c_in, c_out, 7, padding=3)
            mask = torch.ones_like(self.weight)
            mask[:, :, 3, 3 + (mask_type == "B"):] = 0
            mask[:, :, 4:] = 0
            self.register_buffer("mask", mask)

        def forward(self, x):
            return nn.functional.conv2d(x, self.weight * self.mask, self.bias, padding=3)

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
        loss = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        (loss / (x.numel() * np.log(2))).backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    try:
        import torch  # noqa: PLC0415 (optional)
    except ImportError:
        print("torch is not installed: skipped (pip install torch)")
        return
    torch.set_num_threads(args.threads)
    batch = np.random.default_rng(0).integers(0, 2, (128, 28, 28, 1)).astype(np.int32)
    steps = {}
    with common.rng_context():
        for impl in ("auto", "plain"):
            steps[f"jaxar {impl}"], _ = jax_step(impl, batch)
    steps["torch"] = torch_step(torch, batch)
    print(f"jax {jax.__version__}, torch {torch.__version__} ({args.threads} threads), "
          f"{SPEC}, batch 128")
    for name, step in steps.items():  # compile / warm up
        start = time.perf_counter()
        step()
        print(f"  first step ({name}): {time.perf_counter() - start:.1f} s", flush=True)
    seconds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: 128 / statistics.median(s) for name, s in seconds.items()}
    print("  " + " | ".join(f"{name} {r:6.1f} images/s" for name, r in rate.items()))
    print(f"  jaxar auto / torch {rate['jaxar auto'] / rate['torch']:.2f}x | "
          f"jaxar plain / torch {rate['jaxar plain'] / rate['torch']:.2f}x | "
          f"jaxar auto / jaxar plain {rate['jaxar auto'] / rate['jaxar plain']:.2f}x")


if __name__ == "__main__":
    main()

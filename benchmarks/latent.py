"""Images through a VQ-VAE's latent space vs pixel-level PixelSNAIL samples, one run.

  python benchmarks/latent.py --bottom runs/prior_bottom --top runs/prior_top --num 64
  python benchmarks/latent.py --bottom runs/prior_bottom --top runs/prior_top --out latent.json

Times `jaxar.generate_latent` (top codes, bottom codes given them, the VQ-VAE's
decoder; cached samplers) against `jaxar.sample(method="cached")` of a pixel-level
PixelSNAIL of the same image size (`--pixel_config`, random init: speed does not depend
on the weights). Each is called once to compile, then timed once with
`block_until_ready`; both sample `--num` images with the same key. `--out FILE` writes the
figures as JSON (benchmarks/common.py's header first).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(ROOT))

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402


def timed(fn) -> float:
    """Seconds of a second call of `fn` (the first compiles)."""
    fn()
    return bench.timed(fn)[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bottom", required=True, help="bottom prior's workdir")
    p.add_argument("--top", required=True, help="top prior's workdir")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--pixel_config", default="experiments/pixelsnail_cifar10.py:mnist")
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)

    pipeline = jaxar.load_latent(args.bottom, args.top)
    vq = pipeline.vqvae
    labels = (np.arange(args.num) % pipeline.top.model.num_classes).astype(np.int32) \
        if pipeline.top.model.num_classes else None
    key = jax.random.key(0)
    latent = timed(lambda: jaxar.generate_latent(pipeline, key, args.num, labels))

    cfg = jaxar.load_config(str(ROOT / args.pixel_config))
    model = jaxar.build_model(cfg)
    if tuple(model.event_shape) != tuple(vq.model.event_shape):
        raise ValueError(f"--pixel_config's images {model.event_shape} differ from the "
                         f"VQ-VAE's {vq.model.event_shape}")
    variables = jaxar.init_variables(model, cfg, jax.random.key(1))
    pixel = timed(lambda: jaxar.sample(model, variables, key, args.num, method="cached"))
    shape = "x".join(map(str, vq.model.event_shape))
    bench.log(bench.machine())
    bench.log(f"{args.num} images of {shape}: latent pipeline (top "
              f"{pipeline.top.model.event_shape} + bottom {pipeline.bottom.model.event_shape} "
              f"codes + decoder) {latent:.2f} s; pixel-level PixelSNAIL ({args.pixel_config}) "
              f"{pixel:.2f} s: {pixel / latent:.1f}x")
    if args.out:
        bench.write_json(args.out, {
            "num": args.num, "image_shape": list(vq.model.event_shape),
            "top_codes": list(pipeline.top.model.event_shape),
            "bottom_codes": list(pipeline.bottom.model.event_shape), "latent_s": latent,
            "pixel_config": args.pixel_config, "pixel_s": pixel,
            "speedup": pixel / latent}, header)


if __name__ == "__main__":
    main()

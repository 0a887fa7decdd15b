"""Lossless compression with trained runs (`jaxar.codec`) against PNG, WebP and lzma.

  python benchmarks/lossless.py --workdir runs/pixelcnn_mnist --num 1000
  python benchmarks/lossless.py --workdir runs/pixelcnn_mnist runs/pixelcnn_pp_mnist
  python benchmarks/lossless.py --workdir runs/pixelcnn_mnist --out lossless.json

For each run, on the first `--num` images of its test split: bits/dim of the `.jaxar`
file (header included), the model's bits/dim on the same images (`jaxar.bits_per_dim`),
and the same images as optimized PNG files (1 bit per pixel for binary images), WebP
lossless files (where Pillow has WebP) and one lzma stream of the raw pixels (a byte per
pixel, preset 9 extreme); then compress and decompress speed (images/s, compiled first
by a warm-up batch) beside the cached sampler's (`jaxar.sample(method="cached")`, one
timed batch of the same size after a warm-up; `--repeats` rounds of the three, the best
of each). The decoded images are checked equal to
the originals. Prints one Markdown table row per run; `--out FILE` writes every figure as
JSON (benchmarks/common.py's header first).
"""

from __future__ import annotations

import argparse
import io
import lzma
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, features  # noqa: E402

import jaxar  # noqa: E402
from benchmarks import common as bench  # noqa: E402
from jaxar import codec, data  # noqa: E402
from jaxar.cli import compress as cli  # noqa: E402
from jaxar.training import checkpoint  # noqa: E402


def webp_bytes(image_HWC, num_levels: int) -> bytes:
    pixels = cli.display(image_HWC, num_levels).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
        buffer, format="WEBP", lossless=True, quality=100, method=6)
    return buffer.getvalue()


def measure(workdir: str, num: int, batch: int, repeats: int) -> dict:
    cfg, model, variables, step = checkpoint.load_run(workdir)
    _, test = data.load_splits(cfg)
    num = min(num, len(test))
    examples = test.get(np.arange(num))
    x = examples["x"].astype(np.int32)
    labels = examples["labels"].astype(np.int32) if model.num_classes else None
    dims = x.size
    bits = 0.0
    for start in range(0, num, batch):
        rows = slice(start, start + batch)
        bpd = jaxar.bits_per_dim(model, variables, x[rows],
                                 None if labels is None else labels[rows])
        bits += float(np.sum(np.asarray(bpd, np.float64))) * x[0].size
    batch = min(batch, num)
    warm = slice(0, batch)
    compile_s, _ = bench.timed(lambda: codec.compress(
        model, variables, x[warm], None if labels is None else labels[warm], batch_size=batch))
    key = jax.random.key(0)
    sample_labels = None if labels is None else labels[:batch]
    sample = lambda: np.asarray(jaxar.sample(model, variables, key, batch, sample_labels,
                                             method="cached"))
    sample()
    compress_s = decompress_s = sample_s = float("inf")
    for _ in range(repeats):  # interleaved, the best of each: other processes share the CPU
        seconds, blob = bench.timed(lambda: codec.compress(model, variables, x, labels,
                                                           batch_size=batch))
        compress_s = min(compress_s, seconds)
        seconds, decoded = bench.timed(
            lambda blob=blob: codec.decompress(model, variables, blob, labels))
        decompress_s = min(decompress_s, seconds)
        if not np.array_equal(decoded, x):
            raise SystemExit(f"{workdir}: the decoded images differ from the originals")
        sample_s = min(sample_s, bench.timed(sample)[0])
    shape = tuple(cfg.data.get("image_shape", None) or model.event_shape)
    images = x.reshape(-1, *shape)
    png = sum(len(cli.png_bytes(image, model.num_levels)) for image in images)
    webp = (sum(len(webp_bytes(image, model.num_levels)) for image in images)
            if features.check("webp") else None)
    raw = cli.display(x, model.num_levels).astype(np.uint8).tobytes()
    xz = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    bpd = lambda nbytes: 8 * nbytes / dims
    return dict(run=f"{workdir} (step {step}, {model.num_levels} levels)",
                model_name=cfg.model.name, data=cfg.data.name, step=int(step),
                num_levels=model.num_levels, num=num,
                batch=batch, file=bpd(len(blob)), model=bits / dims, png=bpd(png),
                webp=None if webp is None else bpd(webp), lzma=bpd(xz),
                header=codec.HEADER_BYTES, nbytes=len(blob), compile_s=compile_s,
                compress=num / compress_s, decompress=num / decompress_s,
                sample=batch / sample_s)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", nargs="+", required=True, help="training run directories")
    p.add_argument("--num", type=int, default=1000, help="test images per run")
    p.add_argument("--batch", type=int, default=250, help="images coded (and sampled) together")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (the best is shown)")
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args(argv)
    header = bench.run_header(__file__, argv, args.out)
    report = {"runs": []}
    bench.log(f"{bench.machine()}; bits/dim; speeds in images/s at batch {args.batch}")
    print("| run | images | .jaxar file | model | PNG (optimized) | WebP lossless | lzma raw "
          "| compress | decompress | cached sampler |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workdir in args.workdir:
        r = measure(workdir, args.num, args.batch, args.repeats)
        webp = "n/a" if r["webp"] is None else f"{r['webp']:.4f}"
        print(f"| {r['run']} | {r['num']} | {r['file']:.4f} ({r['nbytes']} B) | "
              f"{r['model']:.4f} | {r['png']:.4f} | {webp} | {r['lzma']:.4f} | "
              f"{r['compress']:.1f} | {r['decompress']:.1f} | {r['sample']:.1f} |", flush=True)
        print(f"  (first compress of one batch, compiling: {r['compile_s']:.1f} s)", flush=True)
        report["runs"].append({"workdir": workdir, **r})
        if args.out:
            bench.write_json(args.out, report, header)
    return report


if __name__ == "__main__":
    main()

"""Lossless compression of images with a training run's model (`jaxar.codec`).

  jaxar-compress --workdir runs/pixelcnn_mnist img1.png img2.png --out imgs.jaxar
  jaxar-compress --workdir runs/pixelcnn_mnist --split test --num 1000 --out test.jaxar
  jaxar-decompress --workdir runs/pixelcnn_mnist test.jaxar --out-dir decoded/

PNG files must have the model's image size exactly, and pixel values that are the
model's levels as `jaxar-sample` shows them (`round(v * 255 / (num_levels - 1))`: 0 and
255 for binary models); nothing is resized or requantized. `--split` reads the run's
dataset (the first `--num` examples). Class-conditional models store the labels in the
file (`--labels` for PNG files, the dataset's labels for a split); models with a
conditioning map are compressed through `jaxar.codec` in Python. The compressor prints
bits/dim on disk, the model's bits/dim on the same images and the size of the same
images as optimized PNG files; the decompressor writes `00000.png`, `00001.png`, ...

Run as `python -m jaxar.cli.compress` (compress) or `python -m jaxar.cli.compress
decompress ...`. Bad input ends with one line on stderr and exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time

import numpy as np
from PIL import Image

from jaxar import cli, codec, data, files, models, settings
from jaxar.cli import sample
from jaxar.training import checkpoint


def _compress_parser() -> argparse.ArgumentParser:
    p = cli.Parser("jaxar-compress", __doc__)
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument("images", nargs="*", help="PNG files to compress")
    p.add_argument("--split", default=None, choices=("train", "test"),
                   help="compress a split of the run's dataset instead of PNG files")
    p.add_argument("--num", type=int, default=None, help="examples of --split (default: all)")
    p.add_argument("--labels", default=None,
                   help="class labels of the PNG files: 'all' or comma-separated ints")
    p.add_argument("--out", required=True, help=".jaxar file to write")
    p.add_argument("--batch-size", type=int, default=codec.DEFAULT_BATCH_SIZE,
                   help="images coded together (faster when larger; recorded in the file)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


def _decompress_parser() -> argparse.ArgumentParser:
    p = cli.Parser("jaxar-decompress", __doc__)
    p.description = "Decodes a .jaxar file back into PNG images."
    p.add_argument("--workdir", required=True, help="the training run that compressed it")
    p.add_argument("file", help=".jaxar file to decode")
    p.add_argument("--out-dir", required=True, help="folder for 00000.png, 00001.png, ...")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


def _image_shape(cfg, model) -> tuple[int, int, int]:
    shape = tuple(settings.DataSettings.of(cfg.data).image_shape or model.event_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(f"this run's model does not model grey or RGB images (event shape "
                         f"{tuple(model.event_shape)})")
    return shape


def _load_run(args):
    cfg, model, variables, step = checkpoint.load_run(args.workdir, args.step)
    if not model.autoregressive:
        raise ValueError(f"--workdir: {type(model).__name__} is not an autoregressive model "
                         "and has no likelihood to code with")
    if model.cond_shape:
        raise ValueError("--workdir: this model needs a conditioning map, which the CLI does "
                         "not store; use jaxar.codec.compress with cond in Python")
    return cfg, model, variables, step


def load_png(path: str, shape, num_levels: int) -> np.ndarray:
    """A PNG file as the model's levels, `shape` `[H, W, C]`, refused unless exact."""
    height, width, channels = shape
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path!r} ({err})") from None
    if image.size != (width, height):
        raise ValueError(f"{path}: the model's images are {width}x{height} pixels, this one "
                         f"is {image.size[0]}x{image.size[1]}")
    pixels = np.asarray(image.convert("RGB"), np.int64)
    if channels == 1:
        if np.any(pixels != pixels[..., :1]):
            raise ValueError(f"{path}: a colour image; the model's images are grey")
        pixels = pixels[..., :1]
    levels = np.rint(pixels * (num_levels - 1) / 255.0).astype(np.int64)
    if np.any(display(levels, num_levels) != pixels):
        raise ValueError(f"{path}: pixel values are not the model's {num_levels} levels "
                         f"(round(v * 255 / {num_levels - 1}) for v < {num_levels})")
    return levels.astype(np.int32)


def display(levels, num_levels: int) -> np.ndarray:
    """Levels as 8-bit pixel values, as `jaxar-sample` writes them."""
    return np.rint(np.asarray(levels, np.float64) * 255.0 / (num_levels - 1)).astype(np.int64)


def png_bytes(image_HWC, num_levels: int) -> bytes:
    """One image as an optimized PNG (1 bit per pixel for binary images)."""
    pixels = display(image_HWC, num_levels).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if num_levels == 2:
        image = image.convert("1", dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _inputs(args, cfg, model):
    """(x, labels) to compress: the PNG files or the dataset split."""
    if args.split is None:
        if not args.images:
            raise ValueError("give PNG files or --split")
        if args.num is not None:
            raise ValueError("--num is read with --split only")
        shape = _image_shape(cfg, model)
        x = np.stack([load_png(p, shape, model.num_levels).reshape(model.event_shape)
                      for p in args.images])
        return x, sample.parse_labels(args.labels, model, len(x))
    if args.images:
        raise ValueError("give PNG files or --split, not both")
    if args.labels is not None:
        raise ValueError("--labels is read with PNG files only (a split has its labels)")
    train, test = data.load_splits(cfg)
    split = test if args.split == "test" else train
    num = len(split) if args.num is None else args.num
    if num < 1 or num > len(split):
        raise ValueError(f"--num must lie in [1, {len(split)}] (the split's size), got {num}")
    batch = split.get(np.arange(num))
    return batch["x"].astype(np.int32), (batch["labels"].astype(np.int32)
                                         if model.num_classes else None)


def _model_bits(model, variables, x, labels, batch: int) -> float:
    """The model's total bits on x (`jaxar.bits_per_dim`), in batches."""
    total = 0.0
    for start in range(0, len(x), batch):
        rows = slice(start, start + batch)
        bpd = models.bits_per_dim(model, variables, x[rows],
                                 None if labels is None else labels[rows])
        total += float(np.sum(np.asarray(bpd, np.float64)))
    return total * int(np.prod(model.event_shape))


def run_compress(args) -> str:
    cfg, model, variables, step = _load_run(args)
    out = files.check_output(args.out, "--out", (".jaxar",))
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    x, labels = _inputs(args, cfg, model)
    start = time.perf_counter()
    blob = codec.compress(model, variables, x, labels, batch_size=args.batch_size,
                          store_labels=labels is not None, progress=True)
    seconds = time.perf_counter() - start
    files.write_bytes(out, blob)
    dims = x.size
    model_bpd = _model_bits(model, variables, x, labels, args.batch_size) / dims
    png = sum(len(png_bytes(image, model.num_levels))
              for image in x.reshape(-1, *_image_shape(cfg, model)))
    return (f"compressed {len(x)} images ({dims} dims, step {step}) to {out} in {seconds:.1f} s "
            f"({len(x) / seconds:.1f} images/s): {len(blob)} bytes = "
            f"{8 * len(blob) / dims:.4f} bits/dim on disk (header {codec.HEADER_BYTES} bytes); "
            f"model {model_bpd:.4f} bits/dim on the same images; optimized PNG {png} bytes = "
            f"{8 * png / dims:.4f} bits/dim")


def run_decompress(args) -> str:
    cfg, model, variables, step = _load_run(args)
    out_dir = pathlib.Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir: {str(out_dir)!r} is a file")
    if not out_dir.absolute().parent.is_dir():
        raise ValueError(f"--out-dir: the folder {str(out_dir.absolute().parent)!r} "
                         "does not exist")
    shape = _image_shape(cfg, model)
    try:
        blob = pathlib.Path(args.file).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {args.file!r} ({err.strerror})") from None
    start = time.perf_counter()
    try:
        x = codec.decompress(model, variables, blob, progress=True)
    except ValueError as err:
        raise ValueError(f"{args.file}: {err}") from None
    seconds = time.perf_counter() - start
    out_dir.mkdir(exist_ok=True)
    for i, image in enumerate(x.reshape(-1, *shape)):
        files.write_bytes(out_dir / f"{i:05d}.png", png_bytes(image, model.num_levels))
    return (f"decoded {len(x)} images (step {step}) to {out_dir}/00000.png .. "
            f"{len(x) - 1:05d}.png in {seconds:.1f} s ({len(x) / seconds:.1f} images/s)")


def _main(parser, run, argv) -> int:
    args = parser.parse_args(argv)
    return cli.run(parser, lambda: run(args))


def compress_main(argv=None) -> int:
    """The `jaxar-compress` console script."""
    return _main(_compress_parser(), run_compress, argv)


def decompress_main(argv=None) -> int:
    """The `jaxar-decompress` console script."""
    return _main(_decompress_parser(), run_decompress, argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["decompress"]:
        sys.exit(decompress_main(sys.argv[2:]))
    sys.exit(compress_main())

"""Command line sampler for a training run (EMA params and the config saved in its workdir).

  jaxar-sample --workdir runs/pixelcnn_mnist --num 64 --out grid.png
  jaxar-sample --workdir runs/gated_class --labels 0,1,2 --temperature 0.9 --out c.png
  jaxar-sample --workdir runs/pixelcnn_mnist --complete 3 --keep rows:14 --out done.png
  jaxar-sample --workdir runs/prior_bottom --top runs/prior_top --num 16 --out latent.png

`--complete` takes a PNG (resized to the model's image size) or an index into the run's
test split; `--keep rows:N` / `cols:N` keeps the top rows / left columns, `--keep mask.png`
keeps the pixels that are white in the mask. The completion grid shows the original, the
occluded input (unknown pixels grey) and `--num` completions, one row per original.

`--top TOP_PRIOR` samples through a VQ-VAE's latent space (`jaxar.training.latent`):
`--workdir` is then the bottom prior, and top codes, bottom codes given them and the
VQ-VAE's decoding make each image; `--complete` works in code space (the image is
encoded, the codes of the kept region stay, the rest are sampled).

Run as `python -m jaxar.cli.sample`; in Python use `jaxar.sample(...)` (the function).
Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import numpy as np
from PIL import Image

from jaxar import data, sampling
from jaxar.training import checkpoint, latent, reporting


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxar-sample", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=16, help="samples (or completions per image)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--labels", default=None,
                   help="class labels: 'all' (cycle over classes) or comma-separated ints")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--method", default="auto", choices=sampling.METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complete", default=None, help="PNG file or test-set index to complete")
    p.add_argument("--keep", default="rows:14", help="rows:N, cols:N or a mask PNG")
    p.add_argument("--top", default=None,
                   help="top prior's workdir: sample through a VQ-VAE (--workdir: bottom prior)")
    return p


def parse_labels(spec: str | None, model, num: int):
    """`--labels` -> int32 [num] (cycled), or None for unconditional models."""
    if spec is None:
        return (np.arange(num) % model.num_classes).astype(np.int32) if model.num_classes else None
    if spec == "all":
        if not model.num_classes:
            raise ValueError("--labels: this model is unconditional")
        values = list(range(model.num_classes))
    else:
        try:
            values = [int(v) for v in spec.split(",")]
        except ValueError:
            message = f"--labels must be 'all' or comma-separated ints, got {spec!r}"
            raise ValueError(message) from None
    return np.resize(np.asarray(values, np.int32), num)


def _image_shape(cfg, model) -> tuple[int, int, int]:
    shape = tuple(cfg.data.get("image_shape", None) or model.event_shape)
    if len(shape) != 3:
        raise ValueError(f"--complete needs an image model, this one has event shape {shape}")
    return shape


def load_original(spec: str, cfg, model) -> np.ndarray:
    """The image to complete as ints in [0, num_levels): `[1, *event_shape]`."""
    height, width, channels = _image_shape(cfg, model)
    if spec.isdigit():
        _, test = data.load_splits(cfg)
        if int(spec) >= len(test):
            raise ValueError(f"--complete index must be < {len(test)} (test split size)")
        return test.get(np.array([int(spec)]))["x"]
    try:
        image = Image.open(spec)
    except (OSError, ValueError) as err:
        raise ValueError(f"--complete: cannot read image {spec!r} ({err})") from None
    image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
    pixels = np.asarray(image, np.int64).reshape(height, width, channels)
    x = pixels * model.num_levels // 256
    return x.reshape(1, *model.event_shape).astype(np.int32)


def keep_mask(spec: str, cfg, model) -> np.ndarray:
    """`--keep` -> bool mask of the event shape (True = known)."""
    height, width, channels = _image_shape(cfg, model)
    mask = np.zeros((height, width, channels), bool)
    kind, _, count = spec.partition(":")
    if kind in ("rows", "cols") and count.isdigit():
        n = int(count)
        limit = height if kind == "rows" else width
        if n > limit:
            raise ValueError(f"--keep {spec}: the image has only {limit} {kind}")
        if kind == "rows":
            mask[:n] = True
        else:
            mask[:, :n] = True
    else:
        try:
            image = Image.open(spec).convert("L")
        except (OSError, ValueError):
            raise ValueError(f"--keep must be rows:N, cols:N or a mask PNG, got {spec!r}") from None
        if image.size != (width, height):
            raise ValueError(f"--keep mask must be {width}x{height} pixels, got {image.size}")
        mask[:] = (np.asarray(image) >= 128)[..., None]
    return mask.reshape(model.event_shape)


def _to_display(x, num_levels, image_shape, unknown=None) -> np.ndarray:
    """uint8 images [N, H, W, C]; unknown pixels grey."""
    pixels = np.asarray(x, np.float32).reshape(-1, *image_shape) * 255.0 / (num_levels - 1)
    if unknown is not None:
        pixels = np.where(unknown.reshape(1, *image_shape), 128.0, pixels)
    return pixels.round().astype(np.int32)


def _check_out(args) -> None:
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    out_dir = pathlib.Path(args.out).absolute().parent
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        raise ValueError(f"--out: directory {str(out_dir)!r} does not exist or is not writable")


def _completion_grid(original, mask, xs, num_levels, shape, num) -> np.ndarray:
    """The original, the occluded input (unknown pixels grey) and the completions."""
    return np.concatenate([
        _to_display(original, num_levels, shape),
        _to_display(original, num_levels, shape, unknown=~mask),
        _to_display(xs, num_levels, shape),
    ])


def run_latent(args) -> str:
    """`--top`: sampling (or completing) through a VQ-VAE's latent space."""
    if args.step is not None:
        raise ValueError("--step is not read with --top (each run's newest checkpoint is used)")
    pipeline = latent.load(args.workdir, args.top)
    _check_out(args)
    vq = pipeline.vqvae
    key = jax.random.key(args.seed)
    labels = parse_labels(args.labels, pipeline.top.model, args.num)
    levels = vq.model.num_levels
    if args.complete is None:
        xs = latent.generate(pipeline, key, args.num, labels, args.temperature, args.method)
        reporting.save_image_grid(args.out, xs, levels)
        return f"wrote {args.num} samples through the VQ-VAE's latent space to {args.out}"
    original = load_original(args.complete, vq.cfg, vq.model)
    mask = keep_mask(args.keep, vq.cfg, vq.model)
    xs = latent.complete(pipeline, key, original, mask, args.num, labels, args.temperature,
                         args.method)
    row = _completion_grid(original, mask, xs, levels, vq.model.event_shape, args.num)
    reporting.save_image_grid(args.out, row, 256, cols=args.num + 2)
    return f"wrote original, occluded input and {args.num} code-space completions to {args.out}"


def run(args) -> str:
    if args.top is not None:
        return run_latent(args)
    cfg, model, variables, step = checkpoint.load_run(args.workdir, args.step)
    _check_out(args)
    key = jax.random.key(args.seed)
    labels = parse_labels(args.labels, model, args.num)
    if args.complete is None:
        xs = sampling.sample(model, variables, key, args.num, labels, args.temperature,
                             method=args.method)
        reporting.save_image_grid(args.out, np.asarray(xs), model.num_levels,
                                  cfg.data.get("image_shape", None))
        return f"wrote {args.num} samples of step {step} to {args.out}"
    original = load_original(args.complete, cfg, model)
    mask = keep_mask(args.keep, cfg, model)
    known = np.repeat(original, args.num, axis=0)
    known_mask = np.broadcast_to(mask, known.shape).copy()
    xs = sampling.sample(model, variables, key, args.num, labels, args.temperature,
                         known=known, known_mask=known_mask, method=args.method)
    row = _completion_grid(original, mask, xs, model.num_levels, _image_shape(cfg, model),
                           args.num)
    reporting.save_image_grid(args.out, row, 256, cols=args.num + 2)
    return f"wrote original, occluded input and {args.num} completions (step {step}) to {args.out}"


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        print(run(args))
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

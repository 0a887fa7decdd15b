"""Command line sampler for a training run (EMA params and the config saved in its workdir).

  jaxar-sample --workdir runs/pixelcnn_mnist --num 64 --out grid.png
  jaxar-sample --workdir runs/gated_class --labels 0,1,2 --temperature 0.9 --out c.png
  jaxar-sample --workdir runs/pixelcnn_mnist --complete 3 --keep rows:14 --out done.png
  jaxar-sample --workdir runs/prior_bottom --top runs/prior_top --num 16 --out latent.png

`--complete` takes an image file (decoded as the training folders decode theirs,
`jaxar.data.images.read_image`: centre-cropped to the model's aspect ratio and resized)
or an index into the run's test split; `--keep rows:N` / `cols:N` keeps the top rows /
left columns (default: the top half of the rows), `--keep mask.png` keeps the pixels
that are white in the mask. The completion grid shows the original, the occluded input
(unknown pixels grey) and `--num` completions, one row per original.

`--top TOP_PRIOR` samples through a VQ-VAE's latent space (`jaxar.training.latent`):
`--workdir` is then the bottom prior, and top codes, bottom codes given them and the
VQ-VAE's decoding make each image; `--complete` works in code space (the image is
encoded, the codes of the kept region stay, the rest are sampled).

Samples are drawn `--batch` at a time (default 64): with `--num` <= `--batch`, one call
of `jaxar.sample(key, num)`; beyond, calls of `--batch` samples, the k-th with the key
`fold_in(key, k)` (the first with `key` itself), the last cut to size. So the first
`--batch` samples of any larger `--num` are the samples of `--num BATCH`, and a sample
depends on `--batch` (the sampler draws each dimension of a whole batch with one key).
A `--num` whose grid would exceed Pillow's image size limit is refused before sampling.

`--out` is checked before any work (a writable folder, a `.png` name, not a directory)
and written atomically (`jaxar.files`): a failure or Ctrl-C leaves the previous file
as it was. Bad input ends with one line on stderr and exit code 2; Ctrl-C (SIGINT)
with one line and exit code 130, nothing written.

Run as `python -m jaxar.cli.sample`; in Python use `jaxar.sample(...)` (the function).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from PIL import Image

from jaxar import cli, compilation_cache, data, files, sampling, settings
from jaxar.data import images
from jaxar.training import checkpoint, latent, reporting

DEFAULT_BATCH = 64
# reporting.save_image_grid's upscaling: each grid pixel is SCALE x SCALE pixels in the PNG.
_GRID_SCALE = 4


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser("jaxar-sample", __doc__)
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=16, help="samples (or completions per image)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"samples drawn per call of the sampler (default {DEFAULT_BATCH})")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--labels", default=None,
                   help="class labels: 'all' (cycle over classes) or comma-separated ints")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature (1: the model)")
    p.add_argument("--method", default="auto", choices=sampling.METHODS,
                   help="how to sample; every method draws the same samples")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    p.add_argument("--complete", default=None, help="image file or test-set index to complete")
    p.add_argument("--keep", default=None,
                   help="rows:N, cols:N or a mask PNG (default: rows:HEIGHT/2, the top half)")
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
    shape = tuple(settings.DataSettings.of(cfg.data).image_shape or model.event_shape)
    if len(shape) != 3:
        raise ValueError(f"--complete needs an image model, this one has event shape {shape}")
    return shape


def load_original(spec: str, cfg, model) -> np.ndarray:
    """The image to complete as ints in [0, num_levels): `[1, *event_shape]`."""
    shape = _image_shape(cfg, model)
    if spec.isdigit():
        _, test = data.load_splits(cfg)
        if int(spec) >= len(test):
            raise ValueError(f"--complete index must be < {len(test)} (test split size)")
        return test.get(np.array([int(spec)]))["x"]
    x = images.read_image(spec, shape, model.num_levels, what="--complete")
    return x.reshape(1, *model.event_shape).astype(np.int32)


def keep_mask(spec: str | None, cfg, model) -> np.ndarray:
    """`--keep` -> bool mask of the event shape (True = known); None: the top half of the
    rows."""
    height, width, channels = _image_shape(cfg, model)
    mask = np.zeros((height, width, channels), bool)
    spec = f"rows:{height // 2}" if spec is None else spec
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
    elif not os.path.isfile(spec):
        raise ValueError(f"--keep must be rows:N, cols:N or a mask PNG, got {spec!r}")
    else:  # white (>= 128 of 255) is kept; read as 2 levels
        mask[:] = images.read_image(spec, (height, width, 1), 2, what="--keep",
                                    resize=False).astype(bool)
    return mask.reshape(model.event_shape)


def _to_display(x, num_levels, image_shape, unknown=None) -> np.ndarray:
    """uint8 images [N, H, W, C]; unknown pixels grey."""
    pixels = np.asarray(x, np.float32).reshape(-1, *image_shape) * 255.0 / (num_levels - 1)
    if unknown is not None:
        pixels = np.where(unknown.reshape(1, *image_shape), 128.0, pixels)
    return pixels.round().astype(np.int32)


def _check_args(args) -> None:
    """What can be checked before anything is read: `--out`, `--num`, `--batch`."""
    files.check_output(args.out, "--out", (".png",))
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")


def _grid_pixels(num: int, height: int, width: int, cols: int | None = None) -> int:
    """Pixels of the PNG that reporting.save_image_grid writes for `num` images."""
    cols = cols or int(np.ceil(np.sqrt(num)))
    rows = -(-num // cols)
    return (rows * (height + 1) + 1) * (cols * (width + 1) + 1) * _GRID_SCALE**2


def check_grid_size(num: int, event_shape, image_shape=None, completion=False) -> None:
    """Refuses a `--num` whose grid PNG would be larger than Pillow opens (its
    decompression-bomb limit, `Image.MAX_IMAGE_PIXELS`), before anything is sampled."""
    shape = tuple(image_shape or event_shape)
    height, width = (1, shape[0]) if len(shape) == 1 else shape[:2]
    count = (lambda n: _grid_pixels(n + 2, height, width, n + 2)) if completion \
        else (lambda n: _grid_pixels(n, height, width))
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or count(num) <= limit:
        return
    low, high = 1, num  # the largest --num that fits: count is monotone enough to bisect
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count(mid) <= limit else (low, mid - 1)
    raise ValueError(f"--num {num}: the grid would have {count(num):,} pixels, more than "
                     f"Pillow opens ({limit:,}); use --num {low} or fewer")


def in_batches(draw, key, num: int, batch: int, **per_sample) -> np.ndarray:
    """`num` samples from `draw(key, n, **arrays)` in calls of at most `batch` (see the
    module docstring for the keys); `per_sample` arrays (or None) have `num` rows and are
    cut into the calls' rows (the last call's padding repeats the last row). Each call's
    samples are brought to host memory before the next."""
    if num <= batch:
        return np.asarray(draw(key, num, **per_sample))
    parts = []
    for k, start in enumerate(range(0, num, batch)):
        rows = np.minimum(np.arange(start, start + batch), num - 1)
        sliced = {name: None if value is None else np.asarray(value)[rows]
                  for name, value in per_sample.items()}
        part = draw(key if k == 0 else jax.random.fold_in(key, k), batch, **sliced)
        parts.append(np.asarray(part)[: num - start])
    return np.concatenate(parts)


def _save_grid(path, *args, **kwargs) -> None:
    """`reporting.save_image_grid` (atomic); an OSError is re-raised naming `--out`."""
    try:
        reporting.save_image_grid(path, *args, **kwargs)
    except OSError as err:
        raise OSError(f"--out: cannot write {str(path)!r} ({err.strerror or err}); "
                      f"nothing written, a previous file is unchanged") from err


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
    vq = pipeline.vqvae
    check_grid_size(args.num, vq.model.event_shape, completion=args.complete is not None)
    key = jax.random.key(args.seed)
    labels = parse_labels(args.labels, pipeline.top.model, args.num)
    levels = vq.model.num_levels
    if args.complete is None:
        xs = in_batches(lambda k, n, labels: latent.generate(
            pipeline, k, n, labels, args.temperature, args.method),
            key, args.num, args.batch, labels=labels)
        _save_grid(args.out, xs, levels)
        return f"wrote {args.num} samples through the VQ-VAE's latent space to {args.out}"
    original = load_original(args.complete, vq.cfg, vq.model)
    mask = keep_mask(args.keep, vq.cfg, vq.model)
    xs = in_batches(lambda k, n, labels: latent.complete(
        pipeline, k, original, mask, n, labels, args.temperature, args.method),
        key, args.num, args.batch, labels=labels)
    row = _completion_grid(original, mask, xs, levels, vq.model.event_shape, args.num)
    _save_grid(args.out, row, 256, cols=args.num + 2)
    return f"wrote original, occluded input and {args.num} code-space completions to {args.out}"


def run(args) -> str:
    _check_args(args)
    if args.top is not None:
        return run_latent(args)
    cfg, model, variables, step = checkpoint.load_run(args.workdir, args.step)
    image_shape = settings.DataSettings.of(cfg.data).image_shape
    check_grid_size(args.num, model.event_shape, image_shape, args.complete is not None)
    key = jax.random.key(args.seed)
    labels = parse_labels(args.labels, model, args.num)

    def draw(key, num, labels, known=None, known_mask=None):
        return sampling.sample(model, variables, key, num, labels, args.temperature,
                               known=known, known_mask=known_mask, method=args.method)

    if args.complete is None:
        xs = in_batches(draw, key, args.num, args.batch, labels=labels)
        _save_grid(args.out, xs, model.num_levels, image_shape)
        return f"wrote {args.num} samples of step {step} to {args.out}"
    original = load_original(args.complete, cfg, model)
    mask = keep_mask(args.keep, cfg, model)
    known = np.repeat(original, args.num, axis=0)
    known_mask = np.broadcast_to(mask, known.shape).copy()
    xs = in_batches(draw, key, args.num, args.batch, labels=labels, known=known,
                    known_mask=known_mask)
    row = _completion_grid(original, mask, xs, model.num_levels, _image_shape(cfg, model),
                           args.num)
    _save_grid(args.out, row, 256, cols=args.num + 2)
    return f"wrote original, occluded input and {args.num} completions (step {step}) to {args.out}"


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    compilation_cache.enable()  # a repeated sampling run loads its programs from disk
    return cli.run(parser, lambda: run(args), out_of_memory=(
        f"out of memory drawing {min(args.num, args.batch)} samples at once: use a smaller "
        f"--batch"))


if __name__ == "__main__":
    sys.exit(main())

"""Reading an image file as model input: the one decoding path of every image jaxar reads.

`read_image(path, shape, num_levels)` serves the training image folders
(`jaxar.data.image_folder`), the sampler's `--complete` and `--keep` PNGs, and any
other reader, so that one file gives the same pixels wherever it is read:

* bit depth: 16-bit grey (PIL modes "I;16*", and "I" as PIL opens some 16-bit files)
  is scaled to 8 bits, `v * 255 / 65535` rounded (PIL's own conversion clips at 255,
  which turns nearly every pixel white); 8-bit and 16-bit colour files are read as
  8-bit by PIL itself;
* mode: palette, grey, grey + alpha, RGB, RGBA, CMYK, ... are converted to grey
  (`shape[-1] == 1`, ITU-R 601-2 luma) or RGB (`shape[-1] == 3`); an alpha channel
  is dropped (the colour of each pixel is kept, as torchvision's ImageFolder does);
* geometry: the largest centred crop with the aspect ratio of `shape`, bicubically
  resized to it (`resize=False`: the file must already have the size, else a
  ValueError);
* values: `v * num_levels // 256`, the reduction every data source goes through;
* a file PIL cannot identify, or one truncated or damaged so that decoding fails:
  a one-line ValueError naming `what` and the file.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# What PIL raises for a missing, corrupt, truncated or foreign file, depending on where it
# notices (a truncated PNG: OSError "image file is truncated" or SyntaxError when decoded),
# and for one whose size PIL refuses as a decompression bomb.
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
              Image.DecompressionBombError)


class UnreadableImage(ValueError):
    """A file that cannot be opened or decoded as an image: `path`, and what PIL said
    (`detail`, one line)."""

    def __init__(self, message: str, path: str, detail: str):
        super().__init__(message)
        self.path, self.detail = path, detail


def read_image(path: str | os.PathLike, shape, num_levels: int = 256, *,
               what: str = "image", resize: bool = True) -> np.ndarray:
    """The image file at `path` as uint8 `[height, width, channels]` values in
    `[0, num_levels)`, for `shape = (height, width, channels)` with channels 1 or 3 and
    `2 <= num_levels <= 256` (see the module docstring for the decoding rules).

    A file that cannot be read or decoded raises `UnreadableImage`, a one-line ValueError
    that starts with `what` (e.g. "--complete") and names the file.
    """
    height, width, channels = (int(d) for d in shape)
    if channels not in (1, 3):
        raise ValueError(f"{what}: images are read as grey (1 channel) or RGB (3 channels), "
                         f"got shape {tuple(shape)}")
    if not 2 <= num_levels <= 256:
        raise ValueError(f"{what}: an image has 256 levels, cannot serve {num_levels}")
    try:
        with Image.open(path) as image:
            image.load()  # decodes now: a truncated file fails here, inside the try
            pixels = _to_mode(image, "RGB" if channels == 3 else "L")
    except UNREADABLE as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise UnreadableImage(f"{what}: cannot read image {str(path)!r} ({detail})",
                              str(path), detail) from None
    if resize:
        pixels = _crop_and_resize(pixels, width, height)
    elif pixels.size != (width, height):
        raise ValueError(f"{what} must be {width}x{height} pixels, got "
                         f"{pixels.size[0]}x{pixels.size[1]} ({str(path)!r})")
    values = np.asarray(pixels, np.uint8).reshape(height, width, channels)
    if num_levels == 256:
        return values
    return (values.astype(np.int32) * num_levels // 256).astype(np.uint8)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` as 8-bit "L" or "RGB"; 16-bit grey scaled rather than clipped."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        # Through RGB(A) so that a palette with transparency keeps its colours; the
        # alpha channel is then dropped.
        image = image.convert("RGBA").convert("RGB")
    return image.convert(mode)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """The largest centred crop with the aspect ratio width:height, resized to it."""
    w, h = image.size
    crop_w, crop_h = min(w, h * width // height), min(h, w * height // width)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    image = image.crop((left, top, left + max(crop_w, 1), top + max(crop_h, 1)))
    return image.resize((width, height), Image.Resampling.BICUBIC)

"""Decoding images and label masks from untrusted files, without torch.

What is accepted is decided by the file's content, never its name: JPEG, PNG, BMP or WEBP for
images, PNG for masks; one frame only; at most `max_pixels` pixels, checked from the header before
any pixel is decoded (Pillow's own decompression-bomb guard stays on as a second line). Every
check decodes the whole file, so truncated or corrupt data is found at upload time, not mid-job.

EXIF orientation is ignored on purpose: an image is used as its pixels are stored, like the VOC
tools and ground-truth masks do, so a mask (given or produced) is aligned with the stored pixel
grid. A viewer that rotates photos by their EXIF tag will show such a photo turned relative to
its mask; rotate the pixels themselves (e.g. `exiftran -ai`) before uploading to avoid that.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ml.data.palette import VOC_PALETTE

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
MASK_FORMATS = ("PNG",)
DEFAULT_MAX_PIXELS = 50_000_000

# Hostile or damaged files make Pillow's decoders raise any of these; all mean "cannot use this file".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


class ImageError(ValueError):
    """A file that cannot be used as an image or mask; the message says why and what to do."""


# What reading a checked file can still raise during a run: a damaged file (ImageError), or one
# that vanished or cannot be opened since the dataset was checked (OSError).
READ_ERRORS = (ImageError, OSError)


def _describe_formats(formats: tuple[str, ...]) -> str:
    return formats[0] if len(formats) == 1 else ", ".join(formats[:-1]) + " or " + formats[-1]


@contextmanager
def _open_checked(path: str | Path, formats: tuple[str, ...], max_pixels: int) -> Iterator[Image.Image]:
    """Open `path` and check format, pixel count and frame count from the header; yields the undecoded image."""
    try:
        image = Image.open(path, formats=list(formats))
    except FileNotFoundError as err:
        raise ImageError("file not found") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"not a {_describe_formats(formats)} file (judged by its content, not its name)") from err
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"image has too many pixels to decode safely (limit {max_pixels / 1e6:g} megapixels); downscale it"
        ) from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot read the file header ({err}); the file is damaged") from err
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
                f"{max_pixels / 1e6:g} megapixels; downscale it"
            )
        if width == 0 or height == 0:
            raise ImageError(f"image is empty ({width}x{height})")
        if getattr(image, "n_frames", 1) > 1:
            raise ImageError(
                f"{image.format} file has {image.n_frames} frames (animated or multi-picture); save a single frame"
            )
        yield image


def _decode(image: Image.Image) -> None:
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise ImageError(f"{image.format} data is truncated or corrupt ({err}); re-export the file") from err


def check_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Fully decode an image file and return its (width, height); raises ImageError if it cannot be used."""
    with _open_checked(path, IMAGE_FORMATS, max_pixels) as image:
        _decode(image)
        return image.size


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, whatever its mode (grey, palette, alpha dropped, CMYK, 16-bit)."""
    with _open_checked(path, IMAGE_FORMATS, max_pixels) as image:
        _decode(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # Pillow clips wide integers when converting to RGB; scale 16-bit range to 8-bit instead.
            wide = np.asarray(image, dtype=np.int64)
            return np.repeat((np.clip(wide, 0, 65535) >> 8).astype(np.uint8)[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _labels_from_colours(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) coloured mask -> (H, W) labels; every colour must be a colour of `palette` (row i = label i)."""
    label_by_colour: dict[int, int] = {}
    for label, colour in enumerate(_pack_rgb(palette)):
        label_by_colour.setdefault(int(colour), label)
    colours, inverse = np.unique(_pack_rgb(rgb), return_inverse=True)
    unknown = [int(c) for c in colours if int(c) not in label_by_colour]
    if unknown:
        shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in unknown[:5])
        raise ImageError(
            f"RGB mask has colours outside the label colours: {shown}; save masks as palette or greyscale PNGs "
            "whose pixel values are the labels"
        )
    labels = np.array([label_by_colour[int(c)] for c in colours], dtype=np.uint8)
    return labels[inverse].reshape(rgb.shape[:2])


def read_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 labels of a mask PNG: palette or greyscale pixel values are the labels themselves.

    An RGB PNG (how CVAT exports masks) is accepted when every colour is a label colour: row i of
    `palette` (N, 3) is the colour of label i; the VOC palette when not given.
    """
    with _open_checked(path, MASK_FORMATS, max_pixels) as image:
        _decode(image)
        if image.mode in ("P", "L"):
            return np.array(image, dtype=np.uint8)
        if image.mode == "RGB":
            colours = VOC_PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
            return _labels_from_colours(np.asarray(image, dtype=np.uint8), colours)
        raise ImageError(
            f"mask PNG has mode {image.mode}; save it as a palette (P) or 8-bit greyscale (L) PNG whose "
            "pixel values are the labels (0 background, 1..K classes, 255 ignore)"
        )

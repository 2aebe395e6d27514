"""Thumbnails of uploaded images, made on request from the file the dataset row names."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ml.data.images import read_image
from ml.data.overlays import png_bytes

THUMBNAIL_SIDE = 160  # the longer side, in pixels
PICTURE_SIDE = 480


def thumbnail_png(path: Path, max_pixels: int, side: int = THUMBNAIL_SIDE) -> bytes:
    """The image shrunk to fit `side` x `side` (never enlarged), as PNG; decoded under the pixel cap."""
    picture = Image.fromarray(read_image(path, max_pixels))
    picture.thumbnail((side, side))
    return png_bytes(picture)

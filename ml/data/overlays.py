"""Pictures for people: a mask over its image, the legend of its colours, and the CAM heatmap of each
tagged class (no torch).

The API renders these on demand, so everything here is numpy, Pillow and matplotlib's colour maps.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from ml.data.palette import IGNORE, VOC_PALETTE, colorize

CAPTION_HEIGHT = 14  # a strip above each heatmap panel for the class name
LEGEND_HEIGHT = 16  # per line of class colours under an overlay
EMPTY_CAM = "empty CAM"  # written in the panel of a map that is zero everywhere


def mask_overlay(image_rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The mask's palette colours blended over the image; background left as is, 255 hatched.

    Ignore pixels get diagonal stripes of the VOC ignore colour, so they cannot be mistaken for a
    class of similar colour.
    """
    image = _check_image(image_rgb)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    out = image.astype(np.float32)
    labelled = (mask != 0) & (mask != IGNORE)
    out[labelled] = (1 - alpha) * out[labelled] + alpha * colorize(mask)[labelled]
    rows, cols = np.indices(mask.shape)
    stripes = (mask == IGNORE) & (((rows + cols) // 3) % 2 == 0)
    out[stripes] = VOC_PALETTE[IGNORE]
    return Image.fromarray(out.round().astype(np.uint8), "RGB")


def cam_heatmaps(
    image_rgb: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    classes: Sequence[str],
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """One panel per tagged class, side by side: its CAM (values in [0, 1]) over the image, named above.

    `cams` is (n, H, W) with `keys` its 1-based labels (a make_cams file); `classes` are the
    dataset's class names without background. An image with no tagged class gives the image alone;
    a map that is zero everywhere gives the image faded, with EMPTY_CAM written in its panel.
    """
    image = _check_image(image_rgb)
    height, width = image.shape[:2]
    if cams.shape != (len(keys), height, width):
        raise ValueError(f"cams of shape {cams.shape} for {len(keys)} keys over a {height}x{width} image")
    colour = colormaps[colormap]
    panels = []  # (class name, pixels, note written in the panel)
    for label, cam in zip(keys, cams, strict=True):
        if cam.max() <= 0:  # coloured as heat, it would read as a confident "nowhere", not as no signal
            panels.append((classes[label - 1], (image.astype(np.float32) + 255) / 2, EMPTY_CAM))
        else:
            heat = colour(np.clip(cam, 0.0, 1.0))[..., :3] * 255  # (H, W, 3)
            panels.append((classes[label - 1], (1 - alpha) * image + alpha * heat, None))
    if not panels:
        panels.append(("no tagged class", image.astype(np.float32), None))
    sheet = Image.new("RGB", (width * len(panels), height + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (name, pixels, note) in enumerate(panels):
        sheet.paste(Image.fromarray(pixels.round().astype(np.uint8), "RGB"), (index * width, CAPTION_HEIGHT))
        draw.text((index * width + 2, 1), name, fill="black")
        if note:
            draw.text((index * width + 2, CAPTION_HEIGHT + 2), note, fill="black")
    return sheet


def legend_height(classes: Sequence[str], width: int) -> int:
    """Height of the legend of `classes` on a strip `width` pixels wide (LEGEND_HEIGHT per line)."""
    places = _legend_places(classes, width)
    return (places[-1][1] + 1) * LEGEND_HEIGHT if places else 0


def draw_legend(picture: Image.Image, classes: Sequence[str], top: int) -> None:
    """A swatch of each class's palette colour and its name, from `top` down, wrapped at the picture's width."""
    draw = ImageDraw.Draw(picture)
    places = _legend_places(classes, picture.width)
    for label, (name, (left, line)) in enumerate(zip(classes, places, strict=True), start=1):
        y = top + line * LEGEND_HEIGHT
        draw.rectangle((left, y + 2, left + 9, y + 11), fill=tuple(int(v) for v in VOC_PALETTE[label]))
        draw.text((left + 12, y + 1), name, fill="black")


def with_legend(picture: Image.Image, classes: Sequence[str]) -> Image.Image:
    """`picture` above a white strip with the legend of `classes` (label i is classes[i - 1])."""
    framed = Image.new("RGB", (picture.width, picture.height + legend_height(classes, picture.width)), "white")
    framed.paste(picture, (0, 0))
    draw_legend(framed, classes, picture.height)
    return framed


def _legend_places(classes: Sequence[str], width: int) -> list[tuple[int, int]]:
    """(left, line) of each class's swatch, wrapping onto a new line at `width`."""
    places, left, line = [], 2, 0
    for name in classes:
        entry = 12 + 6 * len(name) + 10  # swatch, name at Pillow's default font width, spacing
        if left > 2 and left + entry > width:
            left, line = 2, line + 1
        places.append((left, line))
        left += entry
    return places


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_overlay_png(image_rgb: np.ndarray, mask: np.ndarray, classes: Sequence[str]) -> bytes:
    """The overlay with the legend of every class's colour under it."""
    return png_bytes(with_legend(mask_overlay(image_rgb, mask), classes))


def cam_heatmaps_png(image_rgb: np.ndarray, cams: np.ndarray, keys: Sequence[int], classes: Sequence[str]) -> bytes:
    return png_bytes(cam_heatmaps(image_rgb, cams, keys, classes))


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return image

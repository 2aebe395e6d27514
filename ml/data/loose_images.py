"""Images to label with a trained segmenter: loose files rather than a dataset, named by their stems
as a dataset's images are, and checked with the checks of a dataset upload (ml.data.images).

Each image is known by two names: its id (the file's stem, what masks are named after) and its
`name` as the user knows it (its path inside an uploaded zip, or as given on the command line), which
failures are reported under.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ml.data.images import ImageError, check_image

FALLBACK_NAME = "image"  # an upload's file name when the one it came with is not a plain file name
_MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class LooseImage:
    id: str  # the file's stem: unique among the images labelled together, a plain file name
    name: str  # as the user knows it
    path: Path


def visible_files(folder: Path) -> list[tuple[str, Path]]:
    """(path relative to `folder`, path) of every file under it, sorted, hidden files and folders left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append((relative.as_posix(), path))
    return found


def name_images(files: Sequence[tuple[str, Path]]) -> tuple[list[LooseImage], dict[str, str]]:
    """The files given as (name, path), each with its stem as id; and {name: reason} of those left out
    because an earlier file has their stem already."""
    images: dict[str, LooseImage] = {}
    left_out = {}
    for name, path in files:
        image_id = path.stem
        if image_id in images:
            left_out[name] = (
                f"image id {image_id!r} (the file's stem) is taken by {images[image_id].name}; rename one of them"
            )
        else:
            images[image_id] = LooseImage(image_id, name, path)
    return list(images.values()), left_out


def check_images(images: Sequence[LooseImage], max_pixels: int) -> dict[str, str]:
    """{name: reason} of the images that cannot be used, each fully decoded under the pixel cap.

    On a few threads, as a dataset's images are checked: decoding releases the GIL."""

    def problem(image: LooseImage) -> str | None:
        try:
            check_image(image.path, max_pixels)
        except ImageError as err:
            return str(err)
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(problem, images))
    return {image.name: reason for image, reason in zip(images, problems, strict=True) if reason}


def plain_file_name(name: str) -> str:
    """`name` cut to its last path component when that is a plain file name (no control characters, not
    hidden, at most 255 bytes), else FALLBACK_NAME: an uploaded file's name, safe to create a file under."""
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    plain = last and not last.startswith(".") and last.isprintable() and len(last.encode()) <= _MAX_NAME_BYTES
    return last if plain else FALLBACK_NAME

"""Decoding every listed image and mask, whatever the layout, and checking that they fit together."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ml.data.dataset import Problem
from ml.data.images import ImageError, check_image, read_mask
from ml.data.layouts.listing import Entry, Listing, relative
from ml.data.palette import IGNORE


def check_files(
    root: Path, entry: Entry, num_classes: int, max_pixels: int, palette: np.ndarray | None
) -> tuple[list[Problem], tuple[int, ...] | None]:
    """Decode the entry's image and mask; returns the problems found and the tags (from the mask if needed)."""
    problems: list[Problem] = []
    size = None
    if entry.image is not None:
        try:
            size = check_image(entry.image, max_pixels)
        except ImageError as err:
            problems.append(entry.file_problem(relative(root, entry.image), str(err)))
    if entry.mask is None:
        return problems, entry.tags
    file = relative(root, entry.mask)
    try:
        labels = read_mask(entry.mask, max_pixels, palette)  # (H, W)
    except ImageError as err:
        return [*problems, entry.file_problem(file, str(err))], entry.tags
    height, width = labels.shape
    if size is not None and (width, height) != size:
        problems.append(entry.file_problem(file, f"mask is {width}x{height} but its image is {size[0]}x{size[1]}"))
    values = np.unique(labels)
    outside = [int(v) for v in values if num_classes < v < IGNORE]
    if outside:
        shown = ", ".join(map(str, outside[:10]))
        message = f"mask values {shown} outside 0..{num_classes} (background and classes) and {IGNORE} (ignore)"
        problems.append(entry.file_problem(file, message))
    tags = entry.tags
    if tags is None:
        tags = tuple(int(v) for v in values if 1 <= v <= num_classes)
        if not tags and not outside:
            problems.append(entry.file_problem(file, "image without tags: its mask holds only background and ignore"))
    return problems, tags


def check_all(
    root: Path, listing: Listing, max_pixels: int, progress: Callable[[int, int], None] | None = None
) -> None:
    """Check every entry's files, adding the problems and mask-derived tags to the entries.

    Runs on a few threads: decoding releases the GIL, and a dataset is thousands of images.
    `progress(done, total)` is called as entries are checked; an exception it raises stops the
    checks (the entries not yet started are dropped, not waited for).
    """

    def check(entry: Entry) -> tuple[list[Problem], tuple[int, ...] | None]:
        return check_files(root, entry, len(listing.classes), max_pixels, listing.palette)

    workers = min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)
    results = []
    try:
        for result in pool.map(check, listing.entries):
            results.append(result)
            if progress is not None:
                progress(len(results), len(listing.entries))
    finally:
        pool.shutdown(cancel_futures=True)
    for entry, (problems, tags) in zip(listing.entries, results, strict=True):
        entry.problems.extend(problems)
        entry.tags = tags

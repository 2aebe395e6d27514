"""Reading a dataset folder in either layout, checking every file and reporting every problem.

The layout is detected from what the folder holds (`ml.data.layouts.manifest`: classes.txt and
tags.csv; `ml.data.layouts.voc`: JPEGImages/); a folder that only wraps one dataset folder, such as
VOCdevkit/VOC2012, is looked into. Both layouts take an optional `synonyms.csv` (`class,word,...`).

Problems found in one image (a bad tag, a missing or corrupt file, a mask that does not fit) make
that image bad; problems in the dataset as a whole (a missing classes.txt, a bad header, a class
listed twice) are always fatal. Every image is fully decoded, on a few threads since decoding
releases the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ml.data.archive import ArchiveError, ArchiveLimits, safe_extract
from ml.data.dataset import Dataset, DatasetError, ImageRecord, Problem
from ml.data.images import DEFAULT_MAX_PIXELS
from ml.data.layouts.checks import check_all
from ml.data.layouts.listing import class_lookup, read_synonyms
from ml.data.layouts.manifest import MANIFEST_FILES, manifest_key, read_manifest
from ml.data.layouts.voc import VOC_IMAGES, name_key, read_voc


def _find_layout(path: Path) -> tuple[Path, str]:
    """The dataset root and its layout; looks through up to two folders that only wrap another folder."""
    root = path
    for _ in range(3):
        has_manifest = any((root / name).exists() for name in MANIFEST_FILES)
        has_voc = (root / VOC_IMAGES).is_dir()
        if has_manifest and has_voc:
            raise DatasetError(
                [Problem(".", None, f"holds both {' and '.join(MANIFEST_FILES)} and {VOC_IMAGES}/; keep one layout")]
            )
        if has_manifest or has_voc:
            return root, "manifest" if has_manifest else "voc"
        children = [child for child in root.iterdir() if not child.name.startswith(".")]
        if len(children) != 1 or not children[0].is_dir():
            break
        root = children[0]
    found = ", ".join(sorted(child.name for child in path.iterdir())[:10]) or "nothing"
    raise DatasetError(
        [
            Problem(
                ".",
                None,
                f"no dataset layout found (it holds: {found}); expected classes.txt, tags.csv and images/ "
                f"(manifest) or {VOC_IMAGES}/ with Annotations/ or SegmentationClass/ (VOC)",
            )
        ]
    )


def read_dataset(
    path: str | Path,
    skip_bad: bool = False,
    split: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Read and check a dataset folder (layout detected); see the layout modules for what each holds.

    Raises DatasetError listing every problem. With skip_bad=True, images with problems are dropped
    and their problems listed in `Dataset.skipped`; problems of the dataset as a whole stay fatal.
    `split` keeps only that split (a tags.csv split value or a VOC list name). `progress(done, total)`
    follows the images being decoded (see `check_all`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    if not path.is_dir():
        raise DatasetError(
            [Problem(path.name, None, "not a folder; a .zip is first extracted with resolve_dataset_path")]
        )
    root, layout = _find_layout(path)
    listing = read_manifest(root, split) if layout == "manifest" else read_voc(root, split)
    if not listing.entries and not listing.problems:
        listing.problems.append(Problem(".", None, "the dataset lists no images"))
    check_all(root, listing, max_pixels, progress)
    bad = [entry for entry in listing.entries if entry.problems]
    image_problems = [problem for entry in bad for problem in entry.problems]
    if listing.problems or (image_problems and not skip_bad):
        raise DatasetError(listing.problems + image_problems)
    images = [
        ImageRecord(id=e.id, image=e.image, tags=e.tags or (), mask=e.mask, split=e.split)
        for e in listing.entries
        if not e.problems
    ]
    if not images:
        raise DatasetError(image_problems + [Problem(".", None, "no usable images left after dropping bad ones")])
    return Dataset(
        root, layout, listing.classes, images, listing.synonyms, skipped=image_problems, label_names=listing.label_names
    )


def ground_truth_masks(path: str | Path) -> dict[str, Path]:
    """The ground-truth mask file of each image that has one, by image id, from the listing alone (nothing
    decoded): for showing the results of a dataset that was read and checked before."""
    root, layout = _find_layout(Path(path))
    listing = read_manifest(root, None) if layout == "manifest" else read_voc(root, None)
    return {entry.id: entry.mask for entry in listing.entries if entry.mask is not None and not entry.problems}


def read_dataset_synonyms(path: str | Path, classes: list[str]) -> dict[str, list[str]]:
    """The synonyms.csv of a dataset folder read and checked before (its `classes`), by class, without
    reading anything else: for showing the candidate words before a job."""
    root, layout = _find_layout(Path(path))
    lookup = class_lookup(classes, manifest_key if layout == "manifest" else name_key)
    return read_synonyms(root, classes, lookup, problems=[])


def load_dataset(path: str | Path, skip_bad: bool = False, split: str | None = None) -> Dataset:
    """Read a dataset folder in either layout (detected), validating every file.

    A .zip is first extracted safely with `resolve_dataset_path(zip, out_dir)`.

    Raises DatasetError listing every problem, unless skip_bad=True, in which case images with
    problems are dropped and listed in `Dataset.skipped` (problems with the dataset as a whole,
    such as a missing classes.txt, are always fatal).
    """
    return read_dataset(Path(path), skip_bad=skip_bad, split=split)


def resolve_dataset_path(path: str | Path, out_dir: str | Path, limits: ArchiveLimits | None = None) -> Path:
    """The dataset folder to read: `path` itself if a folder; a .zip is safely extracted once to out_dir/dataset.

    A re-run with the same out_dir reuses the extracted folder. Archive refusals come as DatasetError.
    """
    path, dest = Path(path), Path(out_dir) / "dataset"
    if path.is_dir():
        return path
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        safe_extract(path, dest, limits)
    except ArchiveError as err:
        raise DatasetError([Problem(path.name, None, str(err))]) from err
    return dest

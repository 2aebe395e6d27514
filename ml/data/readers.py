"""Reading a dataset folder in either layout, checking every file and reporting every problem.

Layouts (detected from what the folder holds; a folder that only wraps one dataset folder, such as
VOCdevkit/VOC2012, is looked into):

- manifest: `classes.txt` (line i names label i; background is 0 and not listed), `tags.csv`
  (header `image,tags` plus an optional `split` column; `image` is a file name inside `images/`
  and the image id is its stem; tags separated by `|`, matched to classes ignoring case), optional
  `masks/<id>.png` ground truth (255 = ignore), optional `synonyms.csv`.
- VOC: `JPEGImages/`; tags from the object names of `Annotations/<id>.xml` (objects marked
  difficult or truncated still count: the class is in the picture), else the labels present in
  `SegmentationClass/<id>.png` (0 and 255 are not tags). The images are those of the lists in
  `ImageSets/Segmentation/*.txt`, each in the split of the smallest list naming it (so train and
  val win over trainval), or every file in `JPEGImages/` as "train" when there are no lists.
  Classes are the 20 VOC classes, or those of `labelmap.txt` when present (CVAT's export, whose
  RGB masks use its colours). Optional `synonyms.csv` as in the manifest layout.

Problems found in one image (a bad tag, a missing or corrupt file, a mask that does not fit) make
that image bad; problems in the dataset as a whole (a missing classes.txt, a bad header, a class
listed twice) are always fatal. Every image is fully decoded, on a few threads since decoding
releases the GIL.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml.data.archive import ArchiveError, ArchiveLimits, safe_extract
from ml.data.dataset import Dataset, DatasetError, ImageRecord, Problem
from ml.data.images import DEFAULT_MAX_PIXELS, ImageError, check_image, read_mask
from ml.data.voc import VOC_CLASSES, name_key, parse_labelmap, read_annotation_objects

MANIFEST_FILES = ("classes.txt", "tags.csv")
VOC_IMAGES = "JPEGImages"
VOC_LISTS = "ImageSets/Segmentation"
DEFAULT_SPLIT = "train"
MAX_CLASSES = 254  # labels 1..254 fit in an 8-bit mask beside background 0 and ignore 255
IGNORE = 255


@dataclass
class _Entry:
    """An image as the dataset lists it, before its files are decoded."""

    id: str
    listed_in: str  # the file that lists the image, relative to the dataset root
    line: int | None  # its line there (None when the listing is a folder's files)
    image: Path | None = None  # None when the listed file is missing
    mask: Path | None = None
    tags: tuple[int, ...] | None = None  # None: derived from the mask
    split: str = DEFAULT_SPLIT
    problems: list[Problem] = field(default_factory=list)

    def problem(self, message: str) -> None:
        """A problem with how the image is listed, reported at that line."""
        self.problems.append(Problem(self.listed_in, self.line, message))

    def file_problem(self, file: str, message: str) -> Problem:
        """A problem inside one of the image's files, reported at that file with where the image is listed."""
        where = f"{self.listed_in}:{self.line}" if self.line else self.listed_in
        return Problem(file, None, f"{message} (listed at {where})")


@dataclass
class _Listing:
    """What a layout reader found: classes, listed images, and problems of the dataset as a whole."""

    classes: list[str]
    entries: list[_Entry]
    synonyms: dict[str, list[str]]
    problems: list[Problem]
    palette: np.ndarray | None = None  # colours of RGB masks, when not the VOC palette


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_lines(root: Path, name: str, problems: list[Problem]) -> list[str] | None:
    data = (root / name).read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        problems.append(Problem(name, line, f"not UTF-8 text (byte {err.start}); save the file as UTF-8"))
        return None


def _csv_rows(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank CSV row."""
    reader = csv.reader(lines)
    for row in reader:
        cells = [cell.strip() for cell in row]
        if any(cells):
            yield reader.line_num, cells


def _files(folder: Path) -> list[Path]:
    """Visible files of a folder, sorted; none if there is no such folder."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def _by_stem(folder: Path) -> dict[str, list[Path]]:
    """Files of a folder by stem (the image id); several files with one stem make that id ambiguous."""
    index: dict[str, list[Path]] = {}
    for path in _files(folder):
        index.setdefault(path.stem, []).append(path)
    return index


def _one_file(entry: _Entry, root: Path, paths: list[Path]) -> Path | None:
    """The single file for an id, or None (with a problem when there are several)."""
    if len(paths) > 1:
        names = ", ".join(_relative(root, p) for p in paths)
        entry.problem(f"id {entry.id!r} matches several files ({names}); keep one")
        return None
    return paths[0] if paths else None


def _class_lookup(classes: list[str], key: Callable[[str], str]) -> Callable[[str], int | None]:
    label_by_key = {key(name): label for label, name in enumerate(classes, start=1)}
    return lambda name: label_by_key.get(key(name))


def _manifest_key(name: str) -> str:
    return " ".join(name.casefold().split())


def _valid_classes(classes: list[str]) -> str:
    shown = ", ".join(classes[:30]) + (", ..." if len(classes) > 30 else "")
    return f"valid classes: {shown}"


def read_synonyms_csv(lines: list[str], file: str) -> tuple[list[tuple[int, str, list[str]]], list[Problem]]:
    """Rows `class,word,word,...` as (line, class, words); a first row starting with `class` is a header."""
    rows: list[tuple[int, str, list[str]]] = []
    problems: list[Problem] = []
    for number, cells in _csv_rows(lines):
        if not rows and not problems and cells[0].casefold() == "class":
            continue
        if not cells[0]:
            problems.append(Problem(file, number, "row without a class name in the first column"))
            continue
        rows.append((number, cells[0], [word for word in cells[1:] if word]))
    return rows, problems


def _read_synonyms(
    root: Path, classes: list[str], lookup: Callable[[str], int | None], problems: list[Problem]
) -> dict[str, list[str]]:
    if not (root / "synonyms.csv").is_file():
        return {}
    lines = _read_lines(root, "synonyms.csv", problems)
    if lines is None:
        return {}
    rows, row_problems = read_synonyms_csv(lines, "synonyms.csv")
    problems.extend(row_problems)
    synonyms: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for number, name, words in rows:
        label = lookup(name)
        if label is None:
            problems.append(Problem("synonyms.csv", number, f"unknown class {name!r}; {_valid_classes(classes)}"))
        elif classes[label - 1] in first_line:
            first = first_line[classes[label - 1]]
            problems.append(Problem("synonyms.csv", number, f"class {name!r} listed twice (first at line {first})"))
        else:
            first_line[classes[label - 1]] = number
            synonyms[classes[label - 1]] = list(dict.fromkeys(words))
    return synonyms


def _read_classes(root: Path, problems: list[Problem]) -> list[str]:
    lines = _read_lines(root, "classes.txt", problems) or []
    while lines and not lines[-1].strip():
        lines.pop()
    classes: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        name = " ".join(raw.split())
        key = _manifest_key(name)
        if not name:
            problems.append(Problem("classes.txt", number, "empty line: line i names label i, so remove it"))
        elif key == "background":
            problems.append(Problem("classes.txt", number, "'background' is label 0 and not listed; remove it"))
        elif any(ch in name for ch in "|,"):
            problems.append(Problem("classes.txt", number, f"class {name!r} contains '|' or ',', which tags.csv uses"))
        elif key in first_line:
            problems.append(
                Problem("classes.txt", number, f"class {name!r} listed twice (first at line {first_line[key]})")
            )
        else:
            first_line[key] = number
        classes.append(name)  # kept even when bad, so that later lines keep their label numbers
    if not lines:
        problems.append(Problem("classes.txt", None, "no classes; write one class name per line"))
    if len(classes) > MAX_CLASSES:
        problems.append(Problem("classes.txt", None, f"{len(classes)} classes; at most {MAX_CLASSES} are supported"))
    return classes


def _read_manifest(root: Path, split: str | None) -> _Listing:
    problems: list[Problem] = []
    for name in MANIFEST_FILES:
        if not (root / name).is_file():
            problems.append(Problem(name, None, "file missing; a manifest dataset needs classes.txt and tags.csv"))
    if not (root / "images").is_dir():
        problems.append(Problem("images/", None, "folder missing; put the image files named in tags.csv there"))
    if problems:
        raise DatasetError(problems)
    classes = _read_classes(root, problems)
    lookup = _class_lookup(classes, _manifest_key)
    synonyms = _read_synonyms(root, classes, lookup, problems)
    lines = _read_lines(root, "tags.csv", problems)
    if lines is None:
        raise DatasetError(problems)
    entries = _read_tags_csv(root, lines, classes, lookup, split, problems)
    return _Listing(classes, entries, synonyms, problems)


def _read_tags_csv(
    root: Path,
    lines: list[str],
    classes: list[str],
    lookup: Callable[[str], int | None],
    split: str | None,
    problems: list[Problem],
) -> list[_Entry]:
    rows = _csv_rows(lines)
    number, header = next(rows, (1, []))
    columns = [cell.casefold() for cell in header]
    if sorted(columns) not in (["image", "tags"], ["image", "split", "tags"]):
        problems.append(
            Problem("tags.csv", number, f"bad header {','.join(header)!r}; expected 'image,tags' or 'image,tags,split'")
        )
        return []
    images = {path.name: path for path in _files(root / "images")}
    images_folded = {name.casefold(): name for name in images}
    masks = _by_stem(root / "masks")
    entries: list[_Entry] = []
    first_line: dict[str, int] = {}
    splits_seen: set[str] = set()
    for number, cells in rows:
        row = dict(zip(columns, cells, strict=False))
        row_split = row.get("split") or DEFAULT_SPLIT
        splits_seen.add(row_split)
        if split is not None and row_split != split:
            continue
        name = row.get("image", "")
        entry = _Entry(id=Path(name).stem, listed_in="tags.csv", line=number, split=row_split)
        entries.append(entry)
        if len(cells) != len(columns):
            entry.problem(f"{len(cells)} fields where the header has {len(columns)}; separate tags with '|', not ','")
        if not name or "/" in name or "\\" in name or name in (".", "..") or not entry.id:
            entry.problem(f"image {name!r} is not a file name; give the name of a file inside images/")
            continue
        if entry.id in first_line:
            entry.problem(f"duplicate image id {entry.id!r} (first listed at line {first_line[entry.id]})")
        first_line.setdefault(entry.id, number)
        entry.image = images.get(name)
        if entry.image is None:
            near = images_folded.get(name.casefold())
            hint = f" (there is images/{near}; names are case-sensitive)" if near else ""
            entry.problem(f"image file images/{name} not found{hint}")
        entry.mask = _one_file(entry, root, masks.get(entry.id, []))
        entry.tags = _parse_tags(row.get("tags", ""), classes, lookup, entry)
    if split is not None and not entries:
        problems.append(
            Problem("tags.csv", None, f"no images in split {split!r}; splits present: {', '.join(sorted(splits_seen))}")
        )
    return entries


def _parse_tags(text: str, classes: list[str], lookup: Callable[[str], int | None], entry: _Entry) -> tuple[int, ...]:
    labels: set[int] = set()
    for tag in (tag.strip() for tag in text.split("|")):
        if not tag:
            continue
        label = lookup(tag)
        if label is None:
            entry.problem(f"unknown tag {tag!r}; {_valid_classes(classes)}")
        else:
            labels.add(label)
    if not labels and not text.strip():
        entry.problem("image without tags; list the classes present, separated by '|'")
    return tuple(sorted(labels))


def _voc_classes(root: Path, problems: list[Problem]) -> tuple[list[str], np.ndarray | None]:
    if not (root / "labelmap.txt").is_file():
        return list(VOC_CLASSES), None
    labelmap, labelmap_problems = parse_labelmap(_read_lines(root, "labelmap.txt", problems) or [], "labelmap.txt")
    problems.extend(labelmap_problems)
    return labelmap.classes, labelmap.palette


def _voc_entries(root: Path, split: str | None, problems: list[Problem]) -> list[_Entry]:
    """The images to read, from the split lists or, without lists, every file in JPEGImages/."""
    lists = _files(root / VOC_LISTS)
    lists = [path for path in lists if path.suffix == ".txt"]
    if not lists:
        if split is not None:
            problems.append(Problem(VOC_LISTS, None, f"split {split!r} asked for, but there are no split lists here"))
        return [
            _Entry(id=image_id, listed_in=_relative(root, paths[0]), line=None)
            for image_id, paths in _by_stem(root / VOC_IMAGES).items()
        ]
    members: dict[str, list[tuple[str, int]]] = {}  # list name -> (id, line)
    for path in lists:
        lines = _read_lines(root, _relative(root, path), problems) or []
        members[path.stem] = [(line.split()[0], n) for n, line in enumerate(lines, start=1) if line.split()]
    if split is not None and split not in members:
        problems.append(Problem(VOC_LISTS, None, f"no list {split}.txt; lists present: {', '.join(sorted(members))}"))
        return []
    # An image named by several lists belongs to the smallest: train and val win over trainval.
    chosen = [split] if split is not None else sorted(members, key=lambda name: (len(members[name]), name))
    entries: dict[str, _Entry] = {}
    for list_name in chosen:
        for image_id, number in members[list_name]:
            entry = entries.get(image_id)
            if entry is None:
                listed_in = f"{VOC_LISTS}/{list_name}.txt"
                entries[image_id] = _Entry(id=image_id, listed_in=listed_in, line=number, split=list_name)
            elif entry.split == list_name:
                entry.problems.append(
                    Problem(entry.listed_in, number, f"id {image_id!r} listed twice (first at line {entry.line})")
                )
    return sorted(entries.values(), key=lambda entry: (entry.listed_in, entry.line or 0))


def _read_voc(root: Path, split: str | None) -> _Listing:
    problems: list[Problem] = []
    classes, palette = _voc_classes(root, problems)
    lookup = _class_lookup(classes, name_key)
    synonyms = _read_synonyms(root, classes, lookup, problems)
    images, masks, annotations = (_by_stem(root / name) for name in (VOC_IMAGES, "SegmentationClass", "Annotations"))
    entries = _voc_entries(root, split, problems)
    for entry in entries:
        entry.image = _one_file(entry, root, images.get(entry.id, []))
        if entry.id not in images:
            entry.problem(f"image file {VOC_IMAGES}/{entry.id}.jpg not found")
            continue
        entry.mask = _one_file(entry, root, masks.get(entry.id, []))
        xml = _one_file(entry, root, annotations.get(entry.id, []))
        if xml is not None:
            entry.tags = _voc_tags(root, xml, classes, lookup, entry)
        if entry.tags is None and entry.mask is None:
            entry.problem(
                f"image without tags: neither Annotations/{entry.id}.xml nor SegmentationClass/{entry.id}.png"
            )
    return _Listing(classes, entries, synonyms, problems, palette)


def _voc_tags(
    root: Path, xml: Path, classes: list[str], lookup: Callable[[str], int | None], entry: _Entry
) -> tuple[int, ...] | None:
    """Labels of the XML's objects; None when it names none, so that the mask decides."""
    file = _relative(root, xml)
    objects, problems = read_annotation_objects(xml, file)
    entry.problems.extend(problems)
    labels: set[int] = set()
    for obj in objects:
        label = lookup(obj.name)
        if label is None:
            entry.problems.append(
                Problem(file, obj.line, f"unknown object name {obj.name!r}; {_valid_classes(classes)}")
            )
        else:
            labels.add(label)
    return tuple(sorted(labels)) if labels or problems else None


def _check_files(
    root: Path, entry: _Entry, num_classes: int, max_pixels: int, palette: np.ndarray | None
) -> tuple[list[Problem], tuple[int, ...] | None]:
    """Decode the entry's image and mask; returns the problems found and the tags (from the mask if needed)."""
    problems: list[Problem] = []
    size = None
    if entry.image is not None:
        try:
            size = check_image(entry.image, max_pixels)
        except ImageError as err:
            problems.append(entry.file_problem(_relative(root, entry.image), str(err)))
    if entry.mask is None:
        return problems, entry.tags
    file = _relative(root, entry.mask)
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


def _check_all(root: Path, listing: _Listing, max_pixels: int) -> None:
    def check(entry: _Entry) -> tuple[list[Problem], tuple[int, ...] | None]:
        return _check_files(root, entry, len(listing.classes), max_pixels, listing.palette)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, listing.entries))
    for entry, (problems, tags) in zip(listing.entries, results, strict=True):
        entry.problems.extend(problems)
        entry.tags = tags


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
    path: str | Path, skip_bad: bool = False, split: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Dataset:
    """Read and check a dataset folder (layout detected); see the module docstring for both layouts.

    Raises DatasetError listing every problem. With skip_bad=True, images with problems are dropped
    and their problems listed in `Dataset.skipped`; problems of the dataset as a whole stay fatal.
    `split` keeps only that split (a tags.csv split value or a VOC list name).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    if not path.is_dir():
        raise DatasetError(
            [Problem(path.name, None, "not a folder; a .zip is first extracted with resolve_dataset_path")]
        )
    root, layout = _find_layout(path)
    listing = _read_manifest(root, split) if layout == "manifest" else _read_voc(root, split)
    if not listing.entries and not listing.problems:
        listing.problems.append(Problem(".", None, "the dataset lists no images"))
    _check_all(root, listing, max_pixels)
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
    return Dataset(root, layout, listing.classes, images, listing.synonyms, skipped=image_problems)


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

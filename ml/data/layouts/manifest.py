"""The manifest layout: `classes.txt`, `tags.csv`, `images/`, optional `masks/` and `synonyms.csv`.

- `classes.txt`: line i names label i; background is 0 and not listed.
- `tags.csv`: header `image,tags` plus an optional `split` column; `image` is a file name inside
  `images/`, or a bare id (`im0` for `images/im0.jpg`, as VOC's split lists write them) when
  exactly one image has that stem; the image id is the file's stem; tags are separated by `|` and
  matched to the classes ignoring case and repeated spaces.
- `masks/<id>.png`: optional ground truth (255 = ignore).

Class names are also the label names exports write, as they are written here. Split names must be
plain names (letters, digits, `_`, `.`, `-`): exports name a file after each split.
"""

from __future__ import annotations

import re
from pathlib import Path

from ml.data.dataset import DatasetError, Problem
from ml.data.layouts.listing import (
    DEFAULT_SPLIT,
    ClassLookup,
    Entry,
    Listing,
    by_stem,
    class_lookup,
    csv_rows,
    files,
    one_file,
    read_lines,
    read_synonyms,
    valid_classes,
)

MANIFEST_FILES = ("classes.txt", "tags.csv")
MAX_CLASSES = 254  # labels 1..254 fit in an 8-bit mask beside background 0 and ignore 255
SPLIT_NAME = re.compile(r"\w[\w.-]*")


def manifest_key(name: str) -> str:
    """How manifest class names are compared: case and repeated spaces ignored."""
    return " ".join(name.casefold().split())


def read_manifest(root: Path, split: str | None) -> Listing:
    """List a manifest dataset's classes and images; raises DatasetError when its files are missing."""
    problems: list[Problem] = []
    for name in MANIFEST_FILES:
        if not (root / name).is_file():
            problems.append(Problem(name, None, "file missing; a manifest dataset needs classes.txt and tags.csv"))
    if not (root / "images").is_dir():
        problems.append(Problem("images/", None, "folder missing; put the image files named in tags.csv there"))
    if problems:
        raise DatasetError(problems)
    classes = _read_classes(root, problems)
    lookup = class_lookup(classes, manifest_key)
    synonyms = read_synonyms(root, classes, lookup, problems)
    lines = read_lines(root, "tags.csv", problems)
    if lines is None:
        raise DatasetError(problems)
    entries = _read_tags_csv(root, lines, classes, lookup, split, problems)
    return Listing(classes, entries, synonyms, problems)


def _read_classes(root: Path, problems: list[Problem]) -> list[str]:
    lines = read_lines(root, "classes.txt", problems) or []
    while lines and not lines[-1].strip():
        lines.pop()
    classes: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        name = " ".join(raw.split())
        key = manifest_key(name)
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


def _read_tags_csv(
    root: Path,
    lines: list[str],
    classes: list[str],
    lookup: ClassLookup,
    split: str | None,
    problems: list[Problem],
) -> list[Entry]:
    rows = csv_rows(lines)
    number, header = next(rows, (1, []))
    columns = [cell.casefold() for cell in header]
    if sorted(columns) not in (["image", "tags"], ["image", "split", "tags"]):
        problems.append(
            Problem("tags.csv", number, f"bad header {','.join(header)!r}; expected 'image,tags' or 'image,tags,split'")
        )
        return []
    images = _ImagesFolder(root / "images")
    masks = by_stem(root / "masks")
    entries: list[Entry] = []
    first_line: dict[str, int] = {}
    splits_seen: set[str] = set()
    for number, cells in rows:
        row = dict(zip(columns, cells, strict=False))
        row_split = row.get("split") or DEFAULT_SPLIT
        splits_seen.add(row_split)
        if split is not None and row_split != split:
            continue
        name = row.get("image", "")
        entry = Entry(id=images.image_id(name), listed_in="tags.csv", line=number, split=row_split)
        entries.append(entry)
        if len(cells) != len(columns):
            entry.problem(f"{len(cells)} fields where the header has {len(columns)}; separate tags with '|', not ','")
        if not SPLIT_NAME.fullmatch(row_split):
            entry.problem(f"split {row_split!r} is not a plain name; use letters, digits, '_', '.' and '-'")
        if not name or "/" in name or "\\" in name or name in (".", "..") or not entry.id:
            entry.problem(f"image {name!r} is not a file name; give the name of a file inside images/")
            continue
        if entry.id in first_line:
            entry.problem(f"duplicate image id {entry.id!r} (first listed at line {first_line[entry.id]})")
        first_line.setdefault(entry.id, number)
        entry.image = images.find(entry, name)
        entry.mask = one_file(entry, root, masks.get(entry.id, []))
        entry.tags = _parse_tags(row.get("tags", ""), classes, lookup, entry)
    if split is not None and not entries:
        problems.append(
            Problem("tags.csv", None, f"no images in split {split!r}; splits present: {', '.join(sorted(splits_seen))}")
        )
    return entries


class _ImagesFolder:
    """The files of images/, indexed once for the two forms an `image` cell may take and for the hints."""

    def __init__(self, folder: Path):
        self.by_name = {path.name: path for path in files(folder)}
        self.by_stem = by_stem(folder)
        # Case-folded name or unambiguous stem -> file name, to point at a near miss.
        self.folded = {stem.casefold(): paths[0].name for stem, paths in self.by_stem.items() if len(paths) == 1}
        self.folded.update((name.casefold(), name) for name in self.by_name)

    def image_id(self, name: str) -> str:
        """The id of the image a cell names: the cell itself when it is a bare id, else the file name's stem."""
        return name if name not in self.by_name and name in self.by_stem else Path(name).stem

    def find(self, entry: Entry, name: str) -> Path | None:
        """The file a cell names: a file name inside images/, or a bare id that exactly one file has as stem."""
        if name in self.by_name:
            return self.by_name[name]
        candidates = self.by_stem.get(name, [])
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            names = ", ".join(path.name for path in candidates)
            entry.problem(f"image {name!r} matches several files in images/ ({names}); write the full file name")
        else:
            entry.problem(f"image file images/{name} not found ({self._missing_hint(name)})")
        return None

    def _missing_hint(self, name: str) -> str:
        near = self.folded.get(name.casefold())
        if near:
            return f"there is images/{near}; names are case-sensitive"
        same_stem = self.by_stem.get(Path(name).stem)
        if same_stem:
            return f"images/ has {', '.join(path.name for path in same_stem)}"
        if not self.by_name:
            return "images/ is empty"
        shown = ", ".join(list(self.by_name)[:5]) + (", ..." if len(self.by_name) > 5 else "")
        return f"images/ holds {shown}"


def _parse_tags(text: str, classes: list[str], lookup: ClassLookup, entry: Entry) -> tuple[int, ...]:
    labels: set[int] = set()
    for tag in (tag.strip() for tag in text.split("|")):
        if not tag:
            continue
        label = lookup(tag)
        if label is None:
            entry.problem(f"unknown tag {tag!r}; {valid_classes(classes)}")
        else:
            labels.add(label)
    if not labels and not text.strip():
        entry.problem("image without tags; list the classes present, separated by '|'")
    return tuple(sorted(labels))

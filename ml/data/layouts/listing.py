"""What both layout readers share: the listing they return, folder and text-file reading, synonyms.csv.

A layout reader lists the dataset's images as `Entry`s without decoding them; problems with how an
image is listed go on its entry (they make that image bad), problems of the dataset as a whole go
on the `Listing` (always fatal).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml.data.dataset import Problem

DEFAULT_SPLIT = "train"

ClassLookup = Callable[[str], int | None]  # class name as written in the dataset -> 1-based label, or None


@dataclass
class Entry:
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
class Listing:
    """What a layout reader found: classes, listed images, and problems of the dataset as a whole."""

    classes: list[str]
    entries: list[Entry]
    synonyms: dict[str, list[str]]
    problems: list[Problem]
    palette: np.ndarray | None = None  # colours of RGB masks, when not the VOC palette
    label_names: list[str] = field(default_factory=list)  # as the dataset's files spell them; [] = the classes


def relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def read_lines(root: Path, name: str, problems: list[Problem]) -> list[str] | None:
    """Lines of a UTF-8 text file (a BOM is dropped); None, with a problem at the offending line, if not UTF-8."""
    data = (root / name).read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        problems.append(Problem(name, line, f"not UTF-8 text (byte {err.start}); save the file as UTF-8"))
        return None


def csv_rows(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank CSV row."""
    reader = csv.reader(lines)
    for row in reader:
        cells = [cell.strip() for cell in row]
        if any(cells):
            yield reader.line_num, cells


def files(folder: Path) -> list[Path]:
    """Visible files of a folder, sorted; none if there is no such folder."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def by_stem(folder: Path) -> dict[str, list[Path]]:
    """Files of a folder by stem (the image id); several files with one stem make that id ambiguous."""
    index: dict[str, list[Path]] = {}
    for path in files(folder):
        index.setdefault(path.stem, []).append(path)
    return index


def one_file(entry: Entry, root: Path, paths: list[Path]) -> Path | None:
    """The single file for an id, or None (with a problem when there are several)."""
    if len(paths) > 1:
        names = ", ".join(relative(root, p) for p in paths)
        entry.problem(f"id {entry.id!r} matches several files ({names}); keep one")
        return None
    return paths[0] if paths else None


def class_lookup(classes: list[str], key: Callable[[str], str]) -> ClassLookup:
    """Label of a class name, names compared by `key` (each layout has its own notion of "the same name")."""
    label_by_key = {key(name): label for label, name in enumerate(classes, start=1)}
    return lambda name: label_by_key.get(key(name))


def valid_classes(classes: list[str]) -> str:
    shown = ", ".join(classes[:30]) + (", ..." if len(classes) > 30 else "")
    return f"valid classes: {shown}"


def read_synonyms_csv(lines: list[str], file: str) -> tuple[list[tuple[int, str, list[str]]], list[Problem]]:
    """Rows `class,word,word,...` as (line, class, words); a first row starting with `class` is a header."""
    rows: list[tuple[int, str, list[str]]] = []
    problems: list[Problem] = []
    for number, cells in csv_rows(lines):
        if not rows and not problems and cells[0].casefold() == "class":
            continue
        if not cells[0]:
            problems.append(Problem(file, number, "row without a class name in the first column"))
            continue
        rows.append((number, cells[0], [word for word in cells[1:] if word]))
    return rows, problems


def read_synonyms(root: Path, classes: list[str], lookup: ClassLookup, problems: list[Problem]) -> dict[str, list[str]]:
    """The dataset's optional synonyms.csv, keyed by the class names as the dataset spells them."""
    if not (root / "synonyms.csv").is_file():
        return {}
    lines = read_lines(root, "synonyms.csv", problems)
    if lines is None:
        return {}
    rows, row_problems = read_synonyms_csv(lines, "synonyms.csv")
    problems.extend(row_problems)
    synonyms: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for number, name, words in rows:
        label = lookup(name)
        if label is None:
            problems.append(Problem("synonyms.csv", number, f"unknown class {name!r}; {valid_classes(classes)}"))
        elif classes[label - 1] in first_line:
            first = first_line[classes[label - 1]]
            problems.append(Problem("synonyms.csv", number, f"class {name!r} listed twice (first at line {first})"))
        else:
            first_line[classes[label - 1]] = number
            synonyms[classes[label - 1]] = list(dict.fromkeys(words))
    return synonyms

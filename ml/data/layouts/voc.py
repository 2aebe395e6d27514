"""The VOC layout: `JPEGImages/`, `Annotations/*.xml`, `SegmentationClass/`, `ImageSets/Segmentation/*.txt`.

Tags come from the object names of `Annotations/<id>.xml` (objects marked difficult or truncated
still count: the class is in the picture), else from the labels present in
`SegmentationClass/<id>.png` (0 and 255 are not tags). The images are those of the lists in
`ImageSets/Segmentation/*.txt`, each in the split of the smallest list naming it (so train and val
win over trainval), or every file in `JPEGImages/` as "train" when there are no lists. Classes are
the 20 VOC classes, or those of CVAT's `labelmap.txt` when present (its RGB masks use its colours;
an `ignored` or `void` entry gives the colour of label 255). The classes are readable words ("dining
table"); the label names, which exports write, are spelled as the dataset spells them: as in its
labelmap.txt, else as its XML annotations write them, else VOC's own spellings ("diningtable").

Label i (1-based) is VOC_CLASSES[i - 1]; 0 is background; 255 is "ignore" in masks only (object
outlines and uncertain pixels), never a class or a tag.
"""

from __future__ import annotations

import xml.sax
from dataclasses import dataclass
from pathlib import Path

import defusedxml.sax
import numpy as np
from defusedxml.common import DefusedXmlException

from ml.data.dataset import Problem
from ml.data.layouts.listing import (
    ClassLookup,
    Entry,
    Listing,
    by_stem,
    class_lookup,
    files,
    one_file,
    read_lines,
    read_synonyms,
    relative,
    valid_classes,
)
from ml.data.palette import IGNORE, VOC_PALETTE

VOC_IMAGES = "JPEGImages"
VOC_LISTS = "ImageSets/Segmentation"

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
)
# VOC's own spellings ("diningtable"): its XML annotations and the tools built on VOC use these.
VOC_LABEL_NAMES: tuple[str, ...] = tuple(name.replace(" ", "") for name in VOC_CLASSES)


def name_key(name: str) -> str:
    """How VOC-layout names are compared: case, spaces and punctuation ignored ("diningtable" = "Dining table")."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


_LABEL_BY_KEY = {name_key(name): label for label, name in enumerate(VOC_CLASSES, start=1)}
# labelmap.txt entries naming the colour of label 255 rather than a class (datumaro writes "ignored").
_IGNORE_KEYS = {"ignored", "ignore", "void"}


def voc_label(name: str) -> int | None:
    """1-based label of a VOC class name, or None; the XML spellings ("diningtable", "tvmonitor") match too."""
    return _LABEL_BY_KEY.get(name_key(name))


@dataclass(frozen=True)
class VocObject:
    name: str
    line: int  # of the object's <name> element
    difficult: bool


class _ObjectCollector(xml.sax.ContentHandler):
    """Collects <object><name> and <object><difficult>; a <part><name> (head, hand, ...) is not an object."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: list[VocObject] = []
        self._open: list[str] = []  # elements enclosing the current one
        self._text: list[str] = []
        self._name, self._name_line, self._difficult = "", 0, False
        self._locator = None

    # SAX calls these by its own camelCase names.
    def setDocumentLocator(self, locator) -> None:
        self._locator = locator

    def startElement(self, name, attrs) -> None:
        if name == "object":
            self._name, self._name_line, self._difficult = "", self._locator.getLineNumber(), False
        self._open.append(name)
        self._text = []

    def characters(self, content) -> None:
        self._text.append(content)

    def endElement(self, name) -> None:
        self._open.pop()
        parent = self._open[-1] if self._open else ""
        text = "".join(self._text).strip()
        if parent == "object" and name == "name":
            self._name, self._name_line = text, self._locator.getLineNumber()
        elif parent == "object" and name == "difficult":
            self._difficult = text == "1"
        elif name == "object":
            self.objects.append(VocObject(self._name, self._name_line, self._difficult))
        self._text = []


def read_annotation_objects(path: Path, file: str) -> tuple[list[VocObject], list[Problem]]:
    """Objects of a VOC annotation XML (DTDs, entities and external references refused); `file` names it in problems."""
    collector = _ObjectCollector()
    try:
        defusedxml.sax.parse(str(path), collector, forbid_dtd=True)
    except xml.sax.SAXParseException as err:
        return [], [Problem(file, err.getLineNumber(), f"not well-formed XML: {err.getMessage()}")]
    except DefusedXmlException as err:
        return [], [Problem(file, None, f"XML uses a DTD, entity or external reference ({err!r}); remove it")]
    problems = [Problem(file, obj.line, "<object> without a <name>") for obj in collector.objects if not obj.name]
    return [obj for obj in collector.objects if obj.name], problems


@dataclass
class LabelMap:
    classes: list[str]  # without background; VOC names in their readable spelling ("dining table")
    label_names: list[str]  # the same labels as the file writes them ("diningtable")
    palette: np.ndarray  # (256, 3) uint8: row i is the colour of label i in RGB masks


def parse_labelmap(lines: list[str], file: str) -> tuple[LabelMap, list[Problem]]:
    """CVAT's labelmap.txt (`name:r,g,b:parts:actions`, background first); an ignore entry colours label 255."""
    problems: list[Problem] = []
    palette = VOC_PALETTE.copy()
    classes: list[str] = []
    label_names: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        name = fields[0].strip()
        try:
            colour = tuple(int(v) for v in fields[1].split(","))
            if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
                raise ValueError
        except (IndexError, ValueError):
            problems.append(Problem(file, number, f"expected 'name:r,g,b::' with r, g, b in 0..255, got {line!r}"))
            continue
        if not name:
            problems.append(Problem(file, number, "empty label name"))
            continue
        key = name_key(name)
        if key in seen:
            problems.append(Problem(file, number, f"label {name!r} listed twice (first at line {seen[key]})"))
            continue
        seen[key] = number
        if key == "background":
            palette[0] = colour
            continue
        if key in _IGNORE_KEYS:
            palette[IGNORE] = colour
            continue
        label = voc_label(name)
        classes.append(VOC_CLASSES[label - 1] if label else name)
        label_names.append(name)
        if len(classes) < 255:
            palette[len(classes)] = colour
    if len(classes) > 254:
        problems.append(Problem(file, None, f"{len(classes)} labels; at most 254 fit in 8-bit masks beside 0 and 255"))
    if not classes:
        problems.append(Problem(file, None, "no labels besides background"))
    return LabelMap(classes, label_names, palette), problems


def read_voc(root: Path, split: str | None) -> Listing:
    """List a VOC dataset's classes and images, with the tags its annotation XMLs give."""
    problems: list[Problem] = []
    labelmap = _read_labelmap(root, problems)
    classes = labelmap.classes if labelmap else list(VOC_CLASSES)
    lookup = class_lookup(classes, name_key)
    xml_spellings: dict[int, str] = {}  # label -> its name as the first XML naming it writes it
    synonyms = read_synonyms(root, classes, lookup, problems)
    images, masks, annotations = (by_stem(root / name) for name in (VOC_IMAGES, "SegmentationClass", "Annotations"))
    entries = _voc_entries(root, split, problems)
    for entry in entries:
        entry.image = one_file(entry, root, images.get(entry.id, []))
        if entry.id not in images:
            entry.problem(f"image file {VOC_IMAGES}/{entry.id}.jpg not found")
            continue
        entry.mask = one_file(entry, root, masks.get(entry.id, []))
        xml = one_file(entry, root, annotations.get(entry.id, []))
        if xml is not None:
            entry.tags = _voc_tags(root, xml, classes, lookup, entry, xml_spellings)
        if entry.tags is None and entry.mask is None:
            entry.problem(
                f"image without tags: neither Annotations/{entry.id}.xml nor SegmentationClass/{entry.id}.png"
            )
    if labelmap:
        return Listing(classes, entries, synonyms, problems, labelmap.palette, labelmap.label_names)
    label_names = [xml_spellings.get(label, name) for label, name in enumerate(VOC_LABEL_NAMES, start=1)]
    return Listing(classes, entries, synonyms, problems, label_names=label_names)


def _read_labelmap(root: Path, problems: list[Problem]) -> LabelMap | None:
    if not (root / "labelmap.txt").is_file():
        return None
    labelmap, labelmap_problems = parse_labelmap(read_lines(root, "labelmap.txt", problems) or [], "labelmap.txt")
    problems.extend(labelmap_problems)
    return labelmap


def _voc_entries(root: Path, split: str | None, problems: list[Problem]) -> list[Entry]:
    """The images to read, from the split lists or, without lists, every file in JPEGImages/."""
    lists = [path for path in files(root / VOC_LISTS) if path.suffix == ".txt"]
    if not lists:
        if split is not None:
            problems.append(Problem(VOC_LISTS, None, f"split {split!r} asked for, but there are no split lists here"))
        return [
            Entry(id=image_id, listed_in=relative(root, paths[0]), line=None)
            for image_id, paths in by_stem(root / VOC_IMAGES).items()
        ]
    members: dict[str, list[tuple[str, int]]] = {}  # list name -> (id, line)
    for path in lists:
        lines = read_lines(root, relative(root, path), problems) or []
        members[path.stem] = [(line.split()[0], n) for n, line in enumerate(lines, start=1) if line.split()]
    if split is not None and split not in members:
        problems.append(Problem(VOC_LISTS, None, f"no list {split}.txt; lists present: {', '.join(sorted(members))}"))
        return []
    # An image named by several lists belongs to the smallest: train and val win over trainval.
    chosen = [split] if split is not None else sorted(members, key=lambda name: (len(members[name]), name))
    entries: dict[str, Entry] = {}
    for list_name in chosen:
        for image_id, number in members[list_name]:
            entry = entries.get(image_id)
            if entry is None:
                listed_in = f"{VOC_LISTS}/{list_name}.txt"
                entries[image_id] = Entry(id=image_id, listed_in=listed_in, line=number, split=list_name)
            elif entry.split == list_name:
                entry.problems.append(
                    Problem(entry.listed_in, number, f"id {image_id!r} listed twice (first at line {entry.line})")
                )
    return sorted(entries.values(), key=lambda entry: (entry.listed_in, entry.line or 0))


def _voc_tags(
    root: Path, xml: Path, classes: list[str], lookup: ClassLookup, entry: Entry, spellings: dict[int, str]
) -> tuple[int, ...] | None:
    """Labels of the XML's objects; None when it names none, so that the mask decides. Adds to `spellings`
    each label's name as written here, unless an earlier file wrote it first."""
    file = relative(root, xml)
    objects, problems = read_annotation_objects(xml, file)
    entry.problems.extend(problems)
    labels: set[int] = set()
    for obj in objects:
        label = lookup(obj.name)
        if label is None:
            entry.problems.append(
                Problem(file, obj.line, f"unknown object name {obj.name!r}; {valid_classes(classes)}")
            )
        else:
            labels.add(label)
            spellings.setdefault(label, obj.name)
    return tuple(sorted(labels)) if labels or problems else None

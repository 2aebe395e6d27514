"""PASCAL VOC names and the two VOC-layout text formats: Annotations/*.xml and CVAT's labelmap.txt.

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
from ml.data.palette import VOC_PALETTE

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


def name_key(name: str) -> str:
    """How VOC-layout names are compared: case, spaces and punctuation ignored ("diningtable" = "Dining table")."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


_LABEL_BY_KEY = {name_key(name): label for label, name in enumerate(VOC_CLASSES, start=1)}


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
    classes: list[str]  # without background
    palette: np.ndarray  # (256, 3) uint8: row i is the colour of label i in RGB masks


def parse_labelmap(lines: list[str], file: str) -> tuple[LabelMap, list[Problem]]:
    """CVAT's labelmap.txt (`name:r,g,b:parts:actions`, background first); VOC names take their canonical spelling."""
    problems: list[Problem] = []
    palette = VOC_PALETTE.copy()
    classes: list[str] = []
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
        label = voc_label(name)
        classes.append(VOC_CLASSES[label - 1] if label else name)
        if len(classes) < 255:
            palette[len(classes)] = colour
    if len(classes) > 254:
        problems.append(Problem(file, None, f"{len(classes)} labels; at most 254 fit in 8-bit masks beside 0 and 255"))
    if not classes:
        problems.append(Problem(file, None, "no labels besides background"))
    return LabelMap(classes, palette), problems

"""The in-memory description of a dataset that every stage reads.

Labels: 0 is background, class i (1-based) is `classes[i - 1]`, 255 is ignore.

Each label has two names. `classes` holds readable words ("dining table"): what prompts, the API and
reports use. `label_names` holds the names the dataset's own files spell ("diningtable" in a VOC
labelmap.txt or XML): what exports write, so that a tool holding the dataset's labels (a CVAT task
made from them, say) accepts the masks back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageRecord:
    id: str  # unique, filesystem-safe (the file stem)
    image: Path
    tags: tuple[int, ...]  # 1-based class labels present in the image, sorted
    mask: Path | None = None  # ground-truth index PNG, when the dataset has one
    split: str = "train"


@dataclass(frozen=True)
class Problem:
    file: str  # path relative to the dataset root
    line: int | None  # 1-based line in `file`, when the problem comes from a text file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class DatasetError(ValueError):
    """A dataset refused as a whole; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"dataset has {len(problems)} problem(s):\n{shown}{more}")


@dataclass
class Dataset:
    root: Path
    layout: str  # "manifest" | "voc"
    classes: list[str]  # without background; label i is classes[i - 1]
    images: list[ImageRecord]
    synonyms: dict[str, list[str]] = field(default_factory=dict)  # from the dataset's synonyms.csv
    skipped: list[Problem] = field(default_factory=list)  # images dropped with skip_bad=True
    label_names: list[str] = field(default_factory=list)  # label i is label_names[i - 1]; [] = the classes

    def __post_init__(self) -> None:
        if not self.label_names:
            self.label_names = list(self.classes)
        if len(self.label_names) != len(self.classes):
            raise ValueError(f"{len(self.label_names)} label names for {len(self.classes)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_masks(self) -> bool:
        return any(im.mask is not None for im in self.images)

    def split(self, name: str) -> list[ImageRecord]:
        return [im for im in self.images if im.split == name]

    def by_id(self, image_id: str) -> ImageRecord:
        for im in self.images:
            if im.id == image_id:
                return im
        raise KeyError(image_id)

"""Builders of tiny image files and datasets for the dataset tests, written with Pillow into tmp_path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (24, 16), fmt: str = "JPEG", seed: int = 0) -> Path:
    """A random RGB picture of size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes: opening it is cheap."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """An 8-bit greyscale PNG whose pixel values are the labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return path


def write_manifest(
    root: Path,
    classes: list[str],
    rows: list[str],
    images: dict[str, tuple[int, int]] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    header: str = "image,tags",
) -> Path:
    """A manifest dataset: classes.txt, tags.csv (header + rows), images/<name> of (width, height), masks/<id>.png."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "tags.csv").write_text("\n".join([header, *rows]) + "\n")
    for seed, (name, size) in enumerate((images or {}).items()):
        fmt = {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(Path(name).suffix.lower(), "JPEG")
        write_image(root / "images" / name, size=size, fmt=fmt, seed=seed)
    for image_id, mask in (masks or {}).items():
        write_mask(root / "masks" / f"{image_id}.png", mask)
    return root


GOOD_MANIFEST_CLASSES = ["cat", "dog", "dining table"]


def good_manifest(root: Path, **kwargs) -> Path:
    """A valid manifest dataset of three images, a.jpg, b.png and c.jpg; kwargs go to write_manifest."""
    return write_manifest(
        root,
        GOOD_MANIFEST_CLASSES,
        ["a.jpg,cat", "b.png,Dog | dining  table", "c.jpg,cat|cat"],
        images={"a.jpg": (20, 10), "b.png": (12, 12), "c.jpg": (8, 6)},
        **kwargs,
    )


def problems_of(excinfo) -> list[str]:
    """The problems of a raised DatasetError, as `file:line: message` strings."""
    return [str(p) for p in excinfo.value.problems]


def voc_xml(*objects: str | tuple[str, bool]) -> str:
    """A VOC annotation; each object is a name or (name, difficult). Every object also has a <part>."""
    parts = []
    for obj in objects:
        name, difficult = (obj, False) if isinstance(obj, str) else obj
        parts.append(
            "  <object>\n"
            f"    <name>{name}</name>\n"
            f"    <difficult>{int(difficult)}</difficult>\n"
            "    <part><name>hand</name></part>\n"
            "  </object>\n"
        )
    return "<annotation>\n  <filename>x.jpg</filename>\n" + "".join(parts) + "</annotation>\n"


def write_voc(
    root: Path,
    images: dict[str, tuple[int, int]],
    annotations: dict[str, str] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    lists: dict[str, list[str]] | None = None,
) -> Path:
    """A VOC dataset: JPEGImages/<id>.jpg, Annotations/<id>.xml, SegmentationClass/<id>.png, split lists."""
    for seed, (image_id, size) in enumerate(images.items()):
        write_image(root / "JPEGImages" / f"{image_id}.jpg", size=size, seed=seed)
    for image_id, xml in (annotations or {}).items():
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    for image_id, mask in (masks or {}).items():
        write_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
    for name, ids in (lists or {}).items():
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root

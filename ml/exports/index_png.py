"""Plain index masks, the layout semantic segmentation training code reads without a converter.

masks/<id>.png       8-bit single-channel PNGs whose pixel values are the labels: 0 background,
                     k class k, 255 ignore (the usual ignore_index of mmsegmentation and torchvision)
splits/<split>.txt   the ids of each split's images, one a line
classes.txt          line k + 1 names label k: background first, then the dataset's label names

The CVAT layout holds the same labels in palette PNGs; these have no palette, so that every reader,
OpenCV's included (which turns a palette PNG into colours), gets the labels themselves.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ml.data.images import read_mask
from ml.exports import ExportedMasks


def write_index_png(folder: Path, masks: ExportedMasks) -> None:
    (folder / "masks").mkdir()
    (folder / "splits").mkdir()
    ids_by_split: dict[str, list[str]] = {}
    for index, image in enumerate(masks.images):
        Image.fromarray(read_mask(image.mask)).save(folder / "masks" / f"{image.id}.png")
        ids_by_split.setdefault(image.split, []).append(image.id)
        masks.on_progress(index + 1)
    for split, ids in ids_by_split.items():
        # Split names are plain file names: the dataset readers refuse any other.
        (folder / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in ["background", *masks.label_names]))

"""export: the archive a user downloads, in every format of `export.formats` (ml.exports).

export/<format>/      that format's layout of the final masks, plus what every archive holds:
  selections.csv      image, class, chosen word, candidates and their CLIP scores, and whether a
                      person's override set the word (a derived run's; ml/spec/overrides.py)
                      (header only when the run had no prompt selection)
  failed_images.csv   images left out, with the reason
  metrics.json        final-mask scores, with the CAM scores under "cams"
  config.json         the fully resolved config of the run
export/<format>.zip   the same files, at the archive's root

`add_format` builds, later, a format the run's config did not ask for, from the finished run.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from pathlib import Path

from ml.data.archive import zip_folder
from ml.exports import ExportedImage, ExportedMasks
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.config import config_to_dict
from ml.spec.layout import CONFIG, METRICS, archive_name
from ml.spec.registry import EXPORT_FORMATS, final_masks_stage, load

SELECTIONS_CSV = "selections.csv"
FAILED_IMAGES_CSV = "failed_images.csv"
SELECTION_COLUMNS = ("image", "class", "chosen", "candidates", "scores", "overridden")


def write_selections(path: Path, selections: list[dict], exported: set[str]) -> int:
    """selections.csv from the run's selections; returns the rows written."""
    rows = [entry for entry in selections if entry["image"] in exported]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SELECTION_COLUMNS)
        for entry in rows:
            scores = "|".join(f"{score:.4f}" for score in entry["scores"])
            overridden = "true" if entry.get("overridden") else "false"
            candidates = "|".join(entry["candidates"])
            writer.writerow([entry["image"], entry["class"], entry["chosen"], candidates, scores, overridden])
    return len(rows)


def gather_metrics(ctx: StageContext) -> dict:
    """eval_masks' metrics at the top level, eval_cams' under "cams" (whichever exist)."""
    metrics: dict = {"has_ground_truth": False, "miou": None}
    masks, cams = ctx.layout.read_metrics("eval_masks"), ctx.layout.read_metrics("eval_cams")
    if masks is not None:
        metrics.update(masks)
    if cams is not None:
        metrics["cams"] = cams
    return metrics


def exported_images(ctx: StageContext) -> list[ExportedImage]:
    """The images the run kept, each with its final mask; raises FileNotFoundError when a mask is missing."""
    source = final_masks_stage(ctx.config)
    images = [
        ExportedImage(record.id, record.image.name, record.split, ctx.layout.mask(source, record.id))
        for record in ctx.usable_images()
    ]
    for image in images:
        if not image.mask.is_file():
            raise FileNotFoundError(f"{image.mask} is missing: the {source} stage did not finish this image")
    return images


def write_format(ctx: StageContext, out: Path, name: str, images: list[ExportedImage], share: tuple[int, int]) -> int:
    """One format's folder and zip in `out`; `share` = (this format's index, how many formats) for
    progress. Returns the selections rows written."""
    folder = out / name
    folder.mkdir()

    def on_progress(done: int) -> None:
        fraction = (share[0] + done / max(len(images), 1)) / share[1]
        ctx.progress(0.9 * fraction, f"{name}: {done}/{len(images)} masks")

    load(EXPORT_FORMATS[name].writer)(folder, ExportedMasks(ctx.dataset.label_names, images, on_progress))
    rows = write_selections(folder / SELECTIONS_CSV, ctx.layout.read_selections(), {image.id for image in images})
    with open(folder / FAILED_IMAGES_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("image", "reason"))
        writer.writerows(sorted(ctx.failed_images.items()))
    write_json(folder / METRICS, gather_metrics(ctx))
    write_json(folder / CONFIG, config_to_dict(ctx.config))
    zip_folder(folder, out / archive_name(name))
    return rows


def run(ctx: StageContext) -> None:
    images = exported_images(ctx)
    formats = ctx.config.export.formats
    with atomic_dir(ctx.stage_dir()) as out:
        rows = 0
        for number, name in enumerate(formats):
            ctx.check_cancel()
            rows = write_format(ctx, out, name, images, (number, len(formats)))
        write_stage_record(
            out, ctx, images=len(images), masks_from=final_masks_stage(ctx.config), formats=list(formats),
            selections=rows, failed=len(ctx.failed_images),
        )  # fmt: skip


def add_format(ctx: StageContext, name: str) -> Path:
    """Build format `name` beside the finished export's own formats and return its zip (at once when
    it is there already). It is written in a scratch folder and moved in zip last, so that a zip in
    place is always a whole one, also when two builds of one format race."""
    layout = ctx.layout
    if layout.archive(name).is_file():
        return layout.archive(name)
    if not layout.stage_done("export"):
        raise FileNotFoundError(f"{layout.stage_dir('export')} is missing: the run has not finished its export")
    images = exported_images(ctx)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=layout.stage_dir("export")))
    try:
        write_format(ctx, scratch, name, images, (0, 1))
        with contextlib.suppress(OSError):  # the folder of a build that won the race is already there
            (scratch / name).rename(layout.export_dir(name))
        os.replace(scratch / archive_name(name), layout.archive(name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return layout.archive(name)

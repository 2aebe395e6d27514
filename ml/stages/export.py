"""export: the archive a user downloads, in every format of `export.formats` (ml.exports).

export/<format>/      that format's layout of the final masks, plus what every archive holds:
  selections.csv      image, class, chosen word, candidates and their CLIP scores
                      (header only when the run had no prompt selection)
  failed_images.csv   images left out, with the reason
  metrics.json        final-mask scores, with the CAM scores under "cams"
  config.json         the fully resolved config of the run
export/<format>.zip   the same files, at the archive's root
"""

from __future__ import annotations

import csv
from pathlib import Path

from ml.data.archive import zip_folder
from ml.exports import ExportedMasks
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.config import config_to_dict
from ml.spec.layout import CONFIG, METRICS, archive_name
from ml.spec.registry import EXPORT_FORMATS, final_masks_stage, load

SELECTIONS_CSV = "selections.csv"
FAILED_IMAGES_CSV = "failed_images.csv"
SELECTION_COLUMNS = ("image", "class", "chosen", "candidates", "scores")


def write_selections(path: Path, selections: list[dict], exported: set[str]) -> int:
    """selections.csv from the run's selections; returns the rows written."""
    rows = [entry for entry in selections if entry["image"] in exported]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SELECTION_COLUMNS)
        for entry in rows:
            scores = "|".join(f"{score:.4f}" for score in entry["scores"])
            writer.writerow([entry["image"], entry["class"], entry["chosen"], "|".join(entry["candidates"]), scores])
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


def write_format(ctx: StageContext, out: Path, name: str, exported: list[str], share: tuple[int, int]) -> int:
    """One format's folder and zip in `out`; `share` = (this format's index, how many formats) for
    progress. Returns the selections rows written."""
    source = final_masks_stage(ctx.config)
    folder = out / name
    folder.mkdir()

    def on_progress(done: int) -> None:
        fraction = (share[0] + done / max(len(exported), 1)) / share[1]
        ctx.progress(0.9 * fraction, f"{name}: {done}/{len(exported)} masks")

    masks = ExportedMasks(ctx.dataset.classes, exported, lambda i: ctx.layout.mask(source, i), on_progress)
    load(EXPORT_FORMATS[name].writer)(folder, masks)
    rows = write_selections(folder / SELECTIONS_CSV, ctx.layout.read_selections(), set(exported))
    with open(folder / FAILED_IMAGES_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("image", "reason"))
        writer.writerows(sorted(ctx.failed_images.items()))
    write_json(folder / METRICS, gather_metrics(ctx))
    write_json(folder / CONFIG, config_to_dict(ctx.config))
    zip_folder(folder, out / archive_name(name))
    return rows


def run(ctx: StageContext) -> None:
    source = final_masks_stage(ctx.config)
    exported = [record.id for record in ctx.usable_images()]
    for image_id in exported:
        if not ctx.layout.mask(source, image_id).is_file():
            raise FileNotFoundError(
                f"{ctx.layout.mask(source, image_id)} is missing: the {source} stage did not finish this image"
            )
    formats = ctx.config.export.formats
    with atomic_dir(ctx.stage_dir()) as out:
        rows = 0
        for number, name in enumerate(formats):
            ctx.check_cancel()
            rows = write_format(ctx, out, name, exported, (number, len(formats)))
        write_stage_record(
            out, ctx, images=len(exported), masks_from=source, formats=list(formats), selections=rows,
            failed=len(ctx.failed_images),
        )  # fmt: skip

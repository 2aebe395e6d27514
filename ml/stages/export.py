"""export: the masks a user downloads, in the layout CVAT imports as "Segmentation mask 1.1".

export/masks/
  SegmentationClass/<id>.png       8-bit palette masks (VOC colours; 255 kept as ignore)
  labelmap.txt                     background and the classes with their colours
  ImageSets/Segmentation/default.txt   the exported image ids
  selections.csv                   image, class, chosen word, candidates and their CLIP scores
                                   (header only when the run had no prompt selection)
  failed_images.csv                images left out, with the reason
  metrics.json                     final-mask scores, with the CAM scores under "cams"
  config.json                      the fully resolved config of the run
export/pole_masks.zip              the same files, at the archive's root
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

from ml.data.palette import labelmap_txt
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.config import config_to_dict
from ml.stages.eval_masks import final_masks_dir

ARCHIVE = "pole_masks.zip"
SELECTION_COLUMNS = ("image", "class", "chosen", "candidates", "scores")


def write_selections(path: Path, selections: Path, exported: set[str]) -> int:
    """selections.csv from select_prompts/selections.jsonl (if that stage ran); returns the rows written."""
    rows = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SELECTION_COLUMNS)
        if not selections.is_file():
            return 0
        for line in selections.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry["image"] not in exported:
                continue
            writer.writerow(
                [
                    entry["image"],
                    entry["class"],
                    entry["chosen"],
                    "|".join(entry["candidates"]),
                    "|".join(f"{score:.4f}" for score in entry["scores"]),
                ]
            )
            rows += 1
    return rows


def gather_metrics(ctx: StageContext) -> dict:
    """eval_masks' metrics at the top level, eval_cams' under "cams" (whichever exist)."""
    metrics: dict = {"has_ground_truth": False, "miou": None}
    for stage, key in (("eval_masks", None), ("eval_cams", "cams")):
        path = ctx.stage_dir(stage) / "metrics.json"
        if path.is_file():
            found = json.loads(path.read_text())
            metrics = {**metrics, **found} if key is None else {**metrics, key: found}
    return metrics


def zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())


def run(ctx: StageContext) -> None:
    source = final_masks_dir(ctx)
    records = ctx.usable_images()
    with atomic_dir(ctx.stage_dir()) as out:
        masks = out / "masks"
        (masks / "SegmentationClass").mkdir(parents=True)
        (masks / "ImageSets" / "Segmentation").mkdir(parents=True)
        for index, record in enumerate(records):
            if index % 64 == 0:
                ctx.check_cancel()
            mask = source / f"{record.id}.png"
            if not mask.is_file():
                raise FileNotFoundError(f"{mask} is missing: the {source.name} stage did not finish this image")
            shutil.copyfile(mask, masks / "SegmentationClass" / f"{record.id}.png")
            ctx.progress((index + 1) / max(len(records), 1) * 0.9, f"{index + 1}/{len(records)} masks")
        exported = [record.id for record in records]
        (masks / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{i}\n" for i in exported))
        (masks / "labelmap.txt").write_text(labelmap_txt(ctx.dataset.classes))
        selections = write_selections(
            masks / "selections.csv", ctx.stage_dir("select_prompts") / "selections.jsonl", set(exported)
        )
        with open(masks / "failed_images.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("image", "reason"))
            writer.writerows(sorted(ctx.failed_images.items()))
        write_json(masks / "metrics.json", gather_metrics(ctx))
        write_json(masks / "config.json", config_to_dict(ctx.config))
        zip_folder(masks, out / ARCHIVE)
        write_stage_record(
            out, ctx, images=len(exported), masks_from=source.name, selections=selections, failed=len(ctx.failed_images)
        )

"""The demo's side of the report (pole/report.py): a job's report and figures filled from the REST
API's answers and the downloaded archive."""

from __future__ import annotations

import shutil
import zipfile
from datetime import datetime
from pathlib import Path

from pole.report import EVALUATIONS, ShownImage, shown_ids, write_figures


def job_scores(metrics: dict) -> dict[str, dict]:
    """Each evaluation's mIoU, per-class and per-split scores from GET /v1/jobs/{id}/metrics, for
    those the job ran with ground truth."""
    return {
        label: {
            "miou": metrics["stages"][stage]["miou"],
            "iou": metrics["stages"][stage]["per_class_iou"],
            "splits": metrics["stages"][stage]["splits"],
            "held_out_splits": metrics["stages"][stage]["held_out_splits"],
        }
        for stage, label in EVALUATIONS
        if stage in metrics["stages"]
    }


def job_floor(metrics: dict) -> float | None:
    """The all-background mIoU on the job's ground truth (the same for every evaluation)."""
    floors = [stage.get("background_only_miou") for stage in metrics["stages"].values()]
    return next((floor for floor in floors if floor is not None), None)


def stage_seconds(job: dict) -> dict[str, float]:
    """Seconds per finished stage, from the job's stage start and finish times."""
    return {
        stage["name"]: (
            datetime.fromisoformat(stage["finished_at"]) - datetime.fromisoformat(stage["started_at"])
        ).total_seconds()
        for stage in job["stages"]
        if stage["started_at"] and stage["finished_at"]
    }


def draw_job_figures(
    out: Path, world: Path, archive: Path, images: list[dict], selections: list[dict], classes: list[str], job: dict
) -> list[Path]:
    """Unpack the archive into out/masks, then draw the contact sheet (held-out images first) and the
    radar of chosen words into `out`; returns the figures written."""
    from ml.data.images import read_image, read_mask

    masks = out / "masks"
    shutil.rmtree(masks, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(masks)  # our own service's archive, written by the export stage
    by_id = {image["id"]: image for image in images}
    shown = []
    kept = {im["id"]: im["split"] for im in images if im["id"] not in job["failed_images"]}
    for image_id in shown_ids(kept, job["config"]["train_split"]):
        image = by_id[image_id]
        shown.append(
            ShownImage(
                id=image_id,
                split=image["split"],
                image=read_image(world / image["file"]),
                ground_truth=read_mask(world / "masks" / f"{image_id}.png") if image["has_mask"] else None,
                mask=read_mask(masks / "SegmentationClass" / f"{image_id}.png"),
                cams=None,
            )
        )
    return write_figures(out, shown, classes, selections)


def score_archive(archive: Path, truths: Path, classes: list[str]) -> dict:
    """mIoU and per-class IoU of a CVAT-layout mask archive against the index PNGs in `truths`
    (<id>.png), over every image both hold; the masks are unpacked next to the archive."""
    from ml.data.images import read_mask
    from ml.metrics import SplitConfusion

    masks = archive.with_suffix("")
    shutil.rmtree(masks, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(masks)  # our own service's archive, written by its prediction run
    confusion = SplitConfusion(len(classes) + 1)
    for mask in sorted((masks / "SegmentationClass").glob("*.png")):
        if (truths / mask.name).is_file():
            confusion.add("all", read_mask(truths / mask.name), read_mask(mask))
    report = confusion.report(classes)
    return {"miou": report["miou"], "iou": report["iou"], "images": report["images"]}

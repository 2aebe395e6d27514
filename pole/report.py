"""What the end of a run shows a person: its archives, the IoU tables, the words chosen per class,
the stage times, the figures drawn and the run's warnings.

`pole run` and `pole stage` fill a `RunReport` from the run directory (`report_from_run`), the demo
from the REST API (pole/demo_report.py); both print it with `print_report` and draw their figures
with `write_figures`. No torch: the demo's process never loads it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ml.spec.layout import CONTACT_SHEET, WORDS_RADAR, CamFile, RunLayout, cam_panels_name

SHOWN_IMAGES = 8  # images in the contact sheet and with CAM panels
FIGURE_SIDE = 320  # longest side of an image in the figures: at full size, eight photos make a gigapixel sheet
SHOWN_FAILURES = 5  # failed images listed by name; the rest are counted
# Evaluation stage, its column in the tables.
EVALUATIONS = (("eval_cams", "CAM"), ("eval_masks", "mask"), ("eval_seg", "segmenter"))


@dataclass
class RunReport:
    classes: list[str]
    # {"CAM" | "mask": {"miou", "iou": {label name: IoU}, "splits": {split: {"miou", "images"}}}}, the
    # shape of the evaluation stages' metrics.json; only the evaluations that had ground truth.
    scores: dict[str, dict]
    background_only_miou: float | None = None
    selections: list[dict] = field(default_factory=list)  # rows with "class", "chosen", "candidates"
    archives: list[Path] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed_images: dict[str, str] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)  # {"stage", "check", "message", "classes"}
    figures: list[Path] = field(default_factory=list)


@dataclass
class ShownImage:
    """One image of the figures, with what the run has made of it so far."""

    id: str
    split: str
    image: np.ndarray  # (H, W, 3) uint8
    ground_truth: np.ndarray | None
    mask: np.ndarray | None  # None before the run has made masks
    cams: CamFile | None  # None before the run has made CAMs, or where the source has none


def print_report(report: RunReport) -> dict:
    """Print the report; returns its numbers (mIoU and per-class IoU, floor, splits, word shares)."""
    from ml.reports import miou_table, word_share_table, word_shares

    for archive in report.archives:
        print(f"archive: {archive}")
    if report.scores:
        print(
            "\nIoU over all images (CAM: fixed background threshold; mask: after the random walk; "
            "segmenter: trained on the masks, see its held-out split below)"
        )
        print(miou_table(report.scores, report.classes))
    if report.background_only_miou is not None:
        print(f"(for reference, calling every pixel background scores {_percent(report.background_only_miou)} mIoU)")
    splits = split_scores(report.scores)
    held_out = {name for metrics in report.scores.values() for name in metrics.get("held_out_splits", [])}
    for name, split in splits.items():
        scores = ", ".join(f"{label} mIoU {_percent(split.get(_split_key(label)))}" for label in report.scores)
        unseen = " (the segmenter never trained on these)" if name in held_out else ""
        print(f"split {name} ({split['images']} images): {scores}{unseen}")
    shares = word_shares(report.selections, report.classes)
    if shares:
        print("\nwords chosen for each class (share of the images tagged with it)")
        print(word_share_table(shares))
    if report.stage_seconds:
        print("\ntime per stage")
        print(stage_time_table(report.stage_seconds))
    if report.failed_images:
        _print_failed(report.failed_images)
    if report.figures:
        print("\nfigures:")
        for path in report.figures:
            print(f"  {path}")
    if report.warnings:
        print(f"\n{len(report.warnings)} warning(s) about this run:")
        for item in report.warnings:
            print(f"warning [{item['stage']}] {item['message']}")
    return {
        "miou": {label: {"miou": s["miou"], "iou": s["iou"]} for label, s in report.scores.items()},
        "background_only_miou": report.background_only_miou,
        "splits": splits,
        "word_shares": shares,
    }


def split_scores(scores: Mapping[str, Mapping]) -> dict[str, dict]:
    """{split: {"images": n, "cam_miou": ..., "mask_miou": ...}} for each split the evaluations scored."""
    splits: dict[str, dict] = {}
    for label, metrics in scores.items():
        for name, split in metrics.get("splits", {}).items():
            splits.setdefault(name, {"images": split["images"]})[_split_key(label)] = split["miou"]
    return splits


def stage_time_table(seconds: Mapping[str, float]) -> str:
    width = max(len(name) for name in [*seconds, "total"])
    rows = [*seconds.items(), ("total", sum(seconds.values()))]
    return "\n".join(f"  {name:<{width}}  {duration(value):>10}" for name, value in rows)


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def shown_ids(split_of: Mapping[str, str], train_split: str) -> list[str]:
    """Up to SHOWN_IMAGES image ids, those outside the training split first: masks of images the
    networks never trained on say more. With train_split "" (train on everything) a split other
    than "train" still comes first, being the one a dataset names as held out."""
    training = train_split or "train"
    return sorted(split_of, key=lambda image_id: (split_of[image_id] == training, image_id))[:SHOWN_IMAGES]


def write_figures(folder: Path, shown: list[ShownImage], classes: list[str], selections: list[dict]) -> list[Path]:
    """The contact sheet of the shown images that have masks, the CAM panels of those that have
    CAMs, and the radar of chosen words when words were chosen; returns the files written."""
    from ml.data.overlays import cam_heatmaps, png_bytes
    from ml.reports import SheetRow, contact_sheet, figure_png, radar_figure, word_shares

    shown = [_fit(im) for im in shown]
    figures: dict[str, bytes] = {}
    with_masks = [im for im in shown if im.mask is not None]
    rows = [SheetRow(f"{im.id} ({im.split})", im.image, im.ground_truth, im.mask) for im in with_masks]
    if rows:
        figures[CONTACT_SHEET] = png_bytes(contact_sheet(rows, classes))
    for im in shown:
        if im.cams is not None:
            figures[cam_panels_name(im.id)] = png_bytes(cam_heatmaps(im.image, im.cams.cam, im.cams.keys, classes))
    shares = word_shares(selections, classes)
    if shares:
        figures[WORDS_RADAR] = figure_png(radar_figure(shares, title="share of images choosing each word"))
    if figures:
        folder.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in figures]


def report_from_run(layout: RunLayout, dataset, config, summary: dict) -> RunReport:
    """The report of a run directory, after `ml.pipeline.run_pipeline` returned `summary`."""
    scores = _run_scores(summary)
    floors = [summary[stage].get("background_only_miou") for stage in ("eval_masks", "eval_cams") if summary.get(stage)]
    archives = [layout.archive(name) for name in config.export.formats]
    return RunReport(
        classes=list(dataset.classes),
        scores=scores,
        background_only_miou=next((floor for floor in floors if floor is not None), None),
        selections=summary["selections"],
        archives=[path for path in archives if path.is_file()],
        stage_seconds=summary.get("stage_seconds", {}),
        failed_images=summary["failed_images"],
        warnings=summary.get("warnings", []),
    )


def draw_run_figures(layout: RunLayout, dataset, config, summary: dict) -> list[Path]:
    """Redraw the run's figures folder from what the run has made so far; returns the files written."""
    from ml.data.images import read_image, read_mask
    from ml.spec.registry import final_masks_stage

    records = {record.id: record for record in _reported_images(dataset, summary)}
    masks_stage = final_masks_stage(config)
    shown = []
    for image_id in shown_ids({r.id: r.split for r in records.values()}, config.train_split):
        record, mask = records[image_id], layout.mask(masks_stage, image_id)
        shown.append(
            ShownImage(
                id=image_id,
                split=record.split,
                image=read_image(record.image),
                ground_truth=read_mask(record.mask) if record.mask else None,
                mask=read_mask(mask) if mask.is_file() else None,
                cams=layout.read_cams(image_id) if layout.cams(image_id).is_file() else None,
            )
        )
    shutil.rmtree(layout.figures, ignore_errors=True)  # a figure of an earlier state of the run would mislead
    return write_figures(layout.figures, shown, dataset.classes, summary["selections"])


def _run_scores(summary: dict) -> dict[str, dict]:
    return {label: summary[stage] for stage, label in EVALUATIONS if (summary.get(stage) or {}).get("miou") is not None}


def _reported_images(dataset, summary: dict) -> list:
    """The images the run kept, less those whose ground truth the evaluations could not read."""
    unscored = {image_id for metrics in _run_scores(summary).values() for image_id in metrics.get("unscored", {})}
    left_out = unscored | set(summary["failed_images"])
    return [record for record in dataset.images if record.id not in left_out]


def _fit(im: ShownImage) -> ShownImage:
    """The image with its masks and CAMs shrunk to FIGURE_SIDE on their longest side (never enlarged)."""
    height, width = im.image.shape[:2]
    scale = FIGURE_SIDE / max(height, width)
    if scale >= 1:
        return im
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def resized(pixels: np.ndarray | None, resample: Image.Resampling) -> np.ndarray | None:
        return None if pixels is None else np.asarray(Image.fromarray(pixels).resize(size, resample))

    cams = im.cams
    if cams is not None:
        maps = [resized(cam, Image.Resampling.BILINEAR) for cam in cams.cam]
        cams = replace(cams, cam=np.stack(maps) if maps else np.zeros((0, size[1], size[0]), np.float32))
    labels = Image.Resampling.NEAREST  # a blend of two labels is a third label
    return replace(
        im,
        image=resized(im.image, Image.Resampling.BILINEAR),
        ground_truth=resized(im.ground_truth, labels),
        mask=resized(im.mask, labels),
        cams=cams,
    )


def _print_failed(failed: Mapping[str, str]) -> None:
    print(f"\n{len(failed)} image(s) failed and have no mask:")
    for image_id, reason in list(failed.items())[:SHOWN_FAILURES]:
        print(f"  {image_id}: {reason}")
    if len(failed) > SHOWN_FAILURES:
        print(f"  ... and {len(failed) - SHOWN_FAILURES} more")


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


def _split_key(label: str) -> str:
    return f"{label.lower()}_miou"

"""eval_masks: mIoU of the final pseudo masks (crf/ when that stage ran, else refine/), scored as they are."""

from __future__ import annotations

from pathlib import Path

from ml.data.images import ImageError, read_mask
from ml.metrics import SplitConfusion
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record


def final_masks_dir(ctx: StageContext) -> Path:
    """Where the run's final masks are: the CRF post-process when enabled, else the random walk's."""
    return ctx.stage_dir("crf" if ctx.config.crf.enabled else "refine")


def run(ctx: StageContext) -> None:
    masks = final_masks_dir(ctx)
    scored = [record for record in ctx.usable_images() if record.mask is not None]
    with atomic_dir(ctx.stage_dir()) as out:
        if not scored:
            write_json(out / "metrics.json", {"has_ground_truth": False, "miou": None, "masks": masks.name})
            write_stage_record(out, ctx, images=0)
            return
        confusion = SplitConfusion(ctx.dataset.num_classes + 1)
        unscored: dict[str, str] = {}
        for index, record in enumerate(scored):
            if index % 16 == 0:
                ctx.check_cancel()
            try:
                gt = read_mask(record.mask)
            except ImageError as err:  # the image keeps its pseudo mask; only its score is missing
                unscored[record.id] = f"ground truth unreadable: {err}"
                continue
            confusion.add(record.split, gt, read_mask(masks / f"{record.id}.png"))
            ctx.progress((index + 1) / len(scored), f"{index + 1}/{len(scored)} images")
        metrics = {
            "has_ground_truth": True,
            "masks": masks.name,
            **confusion.report(ctx.dataset.classes),
            "unscored": unscored,
        }
        write_json(out / "metrics.json", metrics)
        write_stage_record(out, ctx, images=len(scored) - len(unscored))

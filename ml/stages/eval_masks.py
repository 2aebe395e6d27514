"""eval_masks: mIoU of the final pseudo masks (crf/ when that stage ran, else refine/), scored as they are."""

from __future__ import annotations

from ml.data.images import ImageError, read_mask
from ml.health_checks import floor_warning
from ml.metrics import SplitConfusion
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.layout import METRICS
from ml.spec.registry import final_masks_stage


def run(ctx: StageContext) -> None:
    masks = final_masks_stage(ctx.config)
    scored = [record for record in ctx.usable_images() if record.mask is not None]
    with atomic_dir(ctx.stage_dir()) as out:
        if not scored:
            write_json(out / METRICS, {"has_ground_truth": False, "miou": None, "masks": masks})
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
            confusion.add(record.split, gt, read_mask(ctx.layout.mask(masks, record.id)))
            ctx.progress((index + 1) / len(scored), f"{index + 1}/{len(scored)} images")
        metrics = {
            "has_ground_truth": True,
            "masks": masks,
            **confusion.report(ctx.dataset.classes),
            "unscored": unscored,
        }
        write_json(out / METRICS, metrics)
        write_stage_record(
            out,
            ctx,
            images=len(scored) - len(unscored),
            warnings=floor_warning(metrics["miou"], metrics["background_only_miou"], "pseudo masks"),
        )

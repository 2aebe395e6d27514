"""eval_cams: mIoU of the CAMs against ground-truth masks (METHOD.md stage 5, "Evaluation").

The headline scores the CAMs with a constant background score (`eval.cam_bg_threshold`, 0.15);
the threshold sweep is a separate report, since picking its best value looks at the ground truth.
"""

from __future__ import annotations

from ml.data.images import ImageError, read_mask
from ml.health_checks import floor_warning
from ml.metrics import SplitConfusion, ThresholdSweep, cam_labels, sweep_thresholds
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.layout import METRICS


def run(ctx: StageContext) -> None:
    config = ctx.config.eval
    dataset = ctx.dataset
    scored = [record for record in ctx.usable_images() if record.mask is not None]
    with atomic_dir(ctx.stage_dir()) as out:
        if not scored:
            write_json(out / METRICS, {"has_ground_truth": False, "miou": None})
            write_stage_record(out, ctx, images=0)
            return
        num_labels = dataset.num_classes + 1
        headline = SplitConfusion(num_labels)
        sweep = ThresholdSweep(sweep_thresholds(*config.sweep), num_labels)
        unscored: dict[str, str] = {}
        for index, record in enumerate(scored):
            if index % 16 == 0:
                ctx.check_cancel()
            try:
                gt = read_mask(record.mask)
            except ImageError as err:  # the image keeps its pseudo mask; only its score is missing
                unscored[record.id] = f"ground truth unreadable: {err}"
                continue
            cams = ctx.layout.read_cams(record.id)
            headline.add(record.split, gt, cam_labels(cams.cam, cams.keys, config.cam_bg_threshold))
            sweep.add(gt, cams.cam, cams.keys)
            ctx.progress((index + 1) / len(scored), f"{index + 1}/{len(scored)} images")
        metrics = {
            "has_ground_truth": True,
            "threshold": config.cam_bg_threshold,
            **headline.report(dataset.classes),
            "sweep": sweep.report(dataset.classes),
            "unscored": unscored,
        }
        write_json(out / METRICS, metrics)
        write_stage_record(
            out,
            ctx,
            images=len(scored) - len(unscored),
            warnings=floor_warning(metrics["miou"], metrics["background_only_miou"], "CAMs"),
        )

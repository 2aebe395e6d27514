"""eval_seg: mIoU of the segmenter train_seg trained, on every image with ground truth, per class and
split, scored as eval_masks scores the pseudo masks.

The segmenter learnt from the pseudo masks of the `train_split` images, so their figure measures how
well it fits its teacher; the other splits are held out (`held_out_splits`), and their figure is the
one WSSS papers report. With `train_split` "" it trained on every image and none is held out.
"""

from __future__ import annotations

from ml.data.images import READ_ERRORS, read_image, read_mask
from ml.device import pick_device
from ml.health_checks import floor_warning
from ml.metrics import SplitConfusion
from ml.models.segmenter import load_segmenter, predict_masks
from ml.runtime import StageContext, atomic_dir, sha256_file, write_json, write_stage_record
from ml.spec.layout import CHECKPOINT, METRICS


def run(ctx: StageContext) -> None:
    scored = [record for record in ctx.usable_images() if record.mask is not None]
    train_split = ctx.config.train_split
    held_out = sorted({record.split for record in scored if train_split and record.split != train_split})
    splits = {"train_split": train_split, "held_out_splits": held_out}
    checkpoint = ctx.checkpoint("train_seg")
    record_extra = {**splits, "checkpoints": {f"{checkpoint.parent.name}/{CHECKPOINT}": sha256_file(checkpoint)}}
    with atomic_dir(ctx.stage_dir()) as out:
        if not scored:
            write_json(out / METRICS, {"has_ground_truth": False, "miou": None, **splits})
            write_stage_record(out, ctx, images=0, **record_extra)
            return
        model, saved = load_segmenter(checkpoint, pick_device(ctx.config.device))
        confusion = SplitConfusion(ctx.dataset.num_classes + 1)
        unscored: dict[str, str] = {}
        batch_size = ctx.config.train_seg.batch_size
        for start in range(0, len(scored), batch_size):
            ctx.check_cancel()
            readable = []
            for record in scored[start : start + batch_size]:
                try:
                    readable.append((record, read_image(record.image), read_mask(record.mask)))
                except READ_ERRORS as err:  # the image keeps its pseudo mask; only its score is missing
                    unscored[record.id] = f"image or ground truth unreadable: {err}"
            predictions = predict_masks(model, saved, [image for _, image, _ in readable])
            for (record, _, truth), prediction in zip(readable, predictions, strict=True):
                confusion.add(record.split, truth, prediction)
            done = min(start + batch_size, len(scored))
            ctx.progress(done / len(scored), f"{done}/{len(scored)} images")
        metrics = {"has_ground_truth": True, **splits, **confusion.report(ctx.dataset.classes), "unscored": unscored}
        write_json(out / METRICS, metrics)
        write_stage_record(
            out,
            ctx,
            images=len(scored) - len(unscored),
            warnings=floor_warning(metrics["miou"], metrics["background_only_miou"], "segmenter's masks"),
            **record_extra,
        )

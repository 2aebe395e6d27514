"""crf: optional dense-CRF clean-up of the random walk's masks (METHOD.md stage 9; off by default).

Each mask is re-labelled among its own labels (background and the image's tags) by the CRF with
`crf.params`; the results go to crf/<image id>.png and become the masks that are scored and exported.
"""

from __future__ import annotations

from ml.data.images import read_mask
from ml.data.palette import save_mask_png
from ml.dense_crf import crf_mask
from ml.runtime import StageContext, atomic_dir, write_stage_record
from ml.spec.layout import mask_name


def run(ctx: StageContext) -> None:
    params = ctx.config.crf.params
    with atomic_dir(ctx.stage_dir()) as out:
        written = 0
        for record, image in ctx.each_image():
            labels = [0, *record.tags]
            save_mask_png(
                crf_mask(image, read_mask(ctx.layout.mask("refine", record.id)), labels, params),
                out / mask_name(record.id),
            )
            written += 1
        write_stage_record(out, ctx, images=written)

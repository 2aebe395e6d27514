"""make_seeds: IRNet's training labels from the CAMs (METHOD.md stage 6).

Two dense-CRF label maps are made from the full-resolution CAMs: one with a high background score
(`fg_threshold`, 0.30: only confident objects survive) and one with a low one (`bg_threshold`,
0.05: only confident background survives). A pixel is class c where the first says c, background
where both say background, and 255 (unknown, no training signal) elsewhere.
"""

from __future__ import annotations

import numpy as np

from ml.data.palette import IGNORE, save_mask_png
from ml.dense_crf import crf_labels
from ml.runtime import StageContext, atomic_dir, write_stage_record
from ml.spec.config import CrfParams
from ml.spec.layout import mask_name


def crf_map(image_rgb: np.ndarray, cams: np.ndarray, keys: np.ndarray, bg_score: float, params: CrfParams):
    """Argmax of [constant background, CAMs], smoothed by the CRF -> (H, W) labels (0 or a key)."""
    scores = np.concatenate([np.full((1, *cams.shape[1:]), bg_score, cams.dtype), cams])  # (1 + n, H, W)
    labels = np.concatenate([[0], keys]).astype(np.uint8)
    return labels[crf_labels(image_rgb, scores.argmax(axis=0), len(labels), params)]


def seeds_from_cams(image_rgb: np.ndarray, cams: np.ndarray, keys: np.ndarray, config) -> np.ndarray:
    """(H, W) uint8 seeds: 0 background, keys' classes, 255 uncertain."""
    confident_fg = crf_map(image_rgb, cams, keys, config.fg_threshold, config.crf)
    confident_bg = crf_map(image_rgb, cams, keys, config.bg_threshold, config.crf)
    return combine_seeds(confident_fg, confident_bg)


def combine_seeds(confident_fg: np.ndarray, confident_bg: np.ndarray) -> np.ndarray:
    """Class where the high-background map found one, background where both agree, else 255."""
    seeds = np.full(confident_fg.shape, IGNORE, np.uint8)
    seeds[(confident_fg == 0) & (confident_bg == 0)] = 0
    seeds[confident_fg != 0] = confident_fg[confident_fg != 0]
    return seeds


def run(ctx: StageContext) -> None:
    with atomic_dir(ctx.stage_dir()) as out:
        written = 0
        for record, image in ctx.each_image():
            cams = ctx.layout.read_cams(record.id)
            save_mask_png(
                seeds_from_cams(image, cams.cam, cams.keys, ctx.config.make_seeds), out / mask_name(record.id)
            )
            written += 1
        write_stage_record(out, ctx, images=written)

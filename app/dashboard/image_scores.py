"""Per-image mask IoU against the ground truth, for sorting a job's gallery.

The eval stages score whole splits; a person reviewing masks wants the worst images first. A finished
job's masks never change, so each score is computed once (reading two PNGs) and kept in memory, for the
last few jobs looked at.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from app.models import Job, JobState
from app.settings import Settings
from app.storage import dataset_dir, run_layout
from ml.data.images import ImageError, read_mask
from ml.data.palette import IGNORE
from ml.data.readers import ground_truth_masks
from ml.spec.config import config_from_dict
from ml.spec.registry import final_masks_stage

JOBS_KEPT = 16


def image_miou(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    """One image's mIoU as the eval stages score a split: over the labels in its ground truth or its
    prediction, background included; 255 in the truth is left out, 255 in the prediction is a miss."""
    if truth.shape != predicted.shape:
        return None
    scored = truth != IGNORE
    truth, predicted = truth[scored], predicted[scored]
    labels = np.union1d(truth, predicted[predicted != IGNORE])
    ious = [
        np.sum((truth == label) & (predicted == label)) / np.sum((truth == label) | (predicted == label))
        for label in labels
    ]
    return float(np.mean(ious)) if ious else None


class ImageScores:
    """Mask IoU per (job, image), computed on first request; None where an image has no ground truth or
    no mask. Shared by the dashboard's request threads."""

    def __init__(self, settings: Settings, jobs_kept: int = JOBS_KEPT):
        self.settings = settings
        self.jobs_kept = jobs_kept
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, tuple[dict, dict[str, float | None]]] = OrderedDict()

    def scores(self, job: Job, image_ids: Iterable[str]) -> dict[str, float | None]:
        if job.state != JobState.succeeded:
            return {image_id: None for image_id in image_ids}
        truths, known = self._job_entry(job)
        missing = [image_id for image_id in image_ids if image_id not in known]
        masks = final_masks_stage(config_from_dict(job.config))
        layout = run_layout(self.settings, job.id)
        computed = {image_id: self._score(truths.get(image_id), layout.mask(masks, image_id)) for image_id in missing}
        with self._lock:
            known.update(computed)
        return {image_id: known[image_id] for image_id in image_ids}

    def _job_entry(self, job: Job) -> tuple[dict, dict[str, float | None]]:
        with self._lock:
            if job.id in self._jobs:
                self._jobs.move_to_end(job.id)
                return self._jobs[job.id]
        truths = ground_truth_masks(dataset_dir(self.settings, job.dataset.path)) if job.dataset.gt_count else {}
        with self._lock:
            entry = self._jobs.setdefault(job.id, (truths, {}))
            while len(self._jobs) > self.jobs_kept:
                self._jobs.popitem(last=False)
        return entry

    def _score(self, truth_file, mask_file) -> float | None:
        if truth_file is None or not mask_file.is_file():
            return None
        try:
            return image_miou(read_mask(truth_file), read_mask(mask_file))
        except ImageError:  # eval_masks leaves such an image unscored too
            return None

"""Segmentation scores from a confusion matrix accumulated over a whole split (numpy, no torch).

Labels are 0 (background), 1..K (classes) and 255 (ignore). Ground-truth pixels of 255 are left
out. A prediction may also hold 255 (a seed map, say): such a pixel counts against the ground-truth
class (a miss) but for no predicted class, so the matrix has one extra column for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.data.palette import IGNORE


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels + 1) int64 counts: row = GT label, column = predicted label.

    The last column counts pixels the prediction left as 255. `num_labels` includes background.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE
    gt, pred = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    if gt.size and gt.max() >= num_labels:
        raise ValueError(f"ground truth holds label {gt.max()}, but there are only {num_labels} labels")
    unlabelled = pred == IGNORE
    if pred.size and pred[~unlabelled].max(initial=0) >= num_labels:
        raise ValueError(f"prediction holds label {pred[~unlabelled].max()}, but there are only {num_labels} labels")
    pred = np.where(unlabelled, num_labels, pred)
    counts = np.bincount(gt * (num_labels + 1) + pred, minlength=num_labels * (num_labels + 1))
    return counts.reshape(num_labels, num_labels + 1)


def iou_per_label(confusion: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) per label; NaN for a label in neither GT nor prediction."""
    num_labels = confusion.shape[0]
    tp = np.diag(confusion[:, :num_labels]).astype(np.float64)
    gt_total = confusion.sum(axis=1)  # TP + FN (misses include pixels left as 255)
    pred_total = confusion[:, :num_labels].sum(axis=0)  # TP + FP
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU (mean over labels present in GT or prediction, background included) and IoU by name.

    `class_names` lists the K classes without background; absent labels get None (JSON null).
    """
    names = ["background", *class_names]
    if len(names) != confusion.shape[0]:
        raise ValueError(f"{len(names)} label names for a {confusion.shape[0]}-label confusion matrix")
    iou = iou_per_label(confusion)
    present = ~np.isnan(iou)
    return {
        "miou": float(iou[present].mean()) if present.any() else None,
        "iou": {name: (float(v) if ok else None) for name, v, ok in zip(names, iou, present, strict=True)},
        "pixel_accuracy": float(np.trace(confusion[:, : len(names)]) / max(confusion.sum(), 1)),
        "pixels": int(confusion.sum()),
    }


def all_background_miou(confusion: np.ndarray, class_names: Sequence[str]) -> float | None:
    """mIoU of calling every pixel background, on the ground truth `confusion` was counted on: the floor."""
    everything_background = np.zeros_like(confusion)
    everything_background[:, 0] = confusion.sum(axis=1)
    return scores(everything_background, class_names)["miou"]


def cam_foreground(cams: np.ndarray, keys: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(best class score, its label) per pixel of (n_keys, H, W) CAMs; score 0 and label 0 with no keys."""
    if len(keys) == 0:
        return np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    best = cams.argmax(axis=0)
    score = np.take_along_axis(cams, best[None], axis=0)[0].astype(np.float32)
    return score, np.asarray(keys, np.uint8)[best]


def cam_labels(cams: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) labels from CAMs with a constant background score: background wins ties."""
    score, label = cam_foreground(cams, keys, cams.shape[1:])
    return np.where(score > threshold, label, 0).astype(np.uint8)


def sweep_thresholds(start: float, stop: float, step: float) -> np.ndarray:
    """start..stop inclusive; rounded so 0.05 * 3 is 0.15, not 0.15000000000000002."""
    count = int(np.floor((stop - start) / step + 1e-6)) + 1
    return np.round(start + step * np.arange(count), 6)


class ThresholdSweep:
    """One confusion matrix per background threshold, from a single argmax per image."""

    def __init__(self, thresholds: Sequence[float], num_labels: int):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.num_labels = num_labels
        self.confusions = np.zeros((len(self.thresholds), num_labels, num_labels + 1), np.int64)

    def add(self, gt: np.ndarray, cams: np.ndarray, keys: np.ndarray) -> None:
        score, label = cam_foreground(cams, keys, gt.shape)
        for i, threshold in enumerate(self.thresholds):
            pred = np.where(score > threshold, label, 0)
            self.confusions[i] += confusion_matrix(gt, pred, self.num_labels)

    def report(self, class_names: Sequence[str]) -> dict:
        """mIoU per threshold and the best one (a report only: choosing it peeks at the GT)."""
        rows = [
            {"threshold": float(t), "miou": scores(c, class_names)["miou"]}
            for t, c in zip(self.thresholds, self.confusions, strict=True)
        ]
        scored = [r for r in rows if r["miou"] is not None]
        best = max(scored, key=lambda r: r["miou"]) if scored else None
        return {"thresholds": rows, "best": best}


class SplitConfusion:
    """Confusion matrices accumulated per dataset split, reported per split and over all of them."""

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.by_split: dict[str, np.ndarray] = {}
        self.images: dict[str, int] = {}

    def add(self, split: str, gt: np.ndarray, pred: np.ndarray) -> None:
        if split not in self.by_split:
            self.by_split[split] = np.zeros((self.num_labels, self.num_labels + 1), np.int64)
            self.images[split] = 0
        self.by_split[split] += confusion_matrix(gt, pred, self.num_labels)
        self.images[split] += 1

    def report(self, class_names: Sequence[str]) -> dict:
        """Scores over every image; with several splits also `splits`: {name: scores}."""
        total = sum(self.by_split.values(), np.zeros((self.num_labels, self.num_labels + 1), np.int64))
        report = {
            **scores(total, class_names),
            "images": sum(self.images.values()),
            "background_only_miou": all_background_miou(total, class_names),
        }
        if len(self.by_split) > 1:
            report["splits"] = {
                split: {**scores(confusion, class_names), "images": self.images[split]}
                for split, confusion in sorted(self.by_split.items())
            }
        return report

"""Dense CRF (pydensecrf) over a hard label map: the seeds' two maps and the optional final clean-up."""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from ml.spec.config import CrfParams


def crf_labels(image_rgb: np.ndarray, labels: np.ndarray, num_labels: int, params: CrfParams) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) labels in 0..num_labels-1 -> (H, W) labels after mean-field inference.

    Each pixel's unary trusts its label with probability `gt_prob`; a Gaussian (smoothness) and a
    bilateral (colour) pairwise term pull neighbours to agree.
    """
    height, width = labels.shape
    if image_rgb.shape[:2] != (height, width):
        raise ValueError(f"image {image_rgb.shape[:2]} and label map {labels.shape} differ in size")
    if num_labels < 2:
        return np.zeros_like(labels)
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary_from_labels(labels, num_labels, gt_prob=params.gt_prob, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.array(image_rgb, dtype=np.uint8, order="C"),  # a writeable copy: pydensecrf needs one
        compat=params.bilateral_compat,
    )
    marginals = np.array(crf.inference(params.iterations)).reshape(num_labels, height, width)
    return marginals.argmax(axis=0).astype(labels.dtype)


def crf_mask(image_rgb: np.ndarray, mask: np.ndarray, labels: np.ndarray, params: CrfParams) -> np.ndarray:
    """CRF over a mask whose values are among `labels` (e.g. 0 and the image's tags): same values out."""
    labels = np.asarray(labels, dtype=mask.dtype)
    lookup = np.zeros(256, np.int64)
    lookup[labels] = np.arange(len(labels))
    if not np.isin(mask, labels).all():
        raise ValueError(f"mask holds values {sorted(set(np.unique(mask)) - set(labels))} outside {labels.tolist()}")
    return labels[crf_labels(image_rgb, lookup[mask], len(labels), params)]

"""The check an ONNX export must pass before it is kept, on made-up logits (the export itself, with
onnxruntime against PyTorch, is tests/app/test_model_download.py)."""

from __future__ import annotations

import numpy as np

from ml.models.segmenter_onnx import LOGIT_TOLERANCE, compare_logits


def _logits(seed: int, shape=(2, 4, 30, 40)) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=20.0, size=shape).astype(np.float32)


def test_an_export_within_the_tolerance_passes():
    reference = [_logits(0), _logits(1, (1, 4, 17, 23))]
    largest = max(float(np.abs(logits).max()) for logits in reference)
    exported = [logits + 0.5 * LOGIT_TOLERANCE * largest for logits in reference]
    check = compare_logits(reference, exported)
    assert check.passed and check.label_agreement == 1.0
    assert check.tolerance == LOGIT_TOLERANCE * largest


def test_logits_further_apart_than_the_tolerance_fail_even_with_the_same_labels():
    reference = [_logits(0)]
    exported = [reference[0] * 1.01]
    check = compare_logits(reference, exported)
    assert not check.passed and check.label_agreement == 1.0
    assert str(check).startswith("logits differ by up to ")


def test_labels_that_differ_on_more_than_a_thousandth_of_the_pixels_fail():
    reference = [_logits(0)]
    exported = [reference[0].copy()]
    # The class order reversed on 4 pixels of 2 x 30 x 40 (0.17%): each of them changes label.
    exported[0][0, :, 0, :4] = reference[0][0, ::-1, 0, :4]
    check = compare_logits(reference, exported)
    assert check.label_agreement == 1 - 4 / 2400 and not check.passed

import json

import numpy as np
import pytest

from ml.metrics import (
    SplitConfusion,
    ThresholdSweep,
    all_background_miou,
    cam_labels,
    confusion_matrix,
    iou_per_label,
    scores,
    sweep_thresholds,
)

CLASSES = ["a", "b", "c", "d"]  # labels 1..4; c is only predicted, d appears nowhere

# Pixel pairs (gt, pred): (0,0) (0,1) (1,1) (1,3) / (2,2) (2,0) (255,2) (0,255)
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 0]], np.uint8)
PRED = np.array([[0, 1, 1, 3], [2, 0, 2, 255]], np.uint8)


def test_confusion_matrix_matches_the_hand_count():
    expected = np.zeros((5, 6), np.int64)
    expected[0, 0] = expected[0, 1] = 1
    expected[0, 5] = 1  # a GT background pixel the prediction left as 255
    expected[1, 1] = expected[1, 3] = 1
    expected[2, 2] = expected[2, 0] = 1
    # the (255, 2) pixel is ignored
    np.testing.assert_array_equal(confusion_matrix(GT, PRED, 5), expected)


def test_iou_and_miou_by_hand_including_classes_absent_from_gt():
    report = scores(confusion_matrix(GT, PRED, 5), CLASSES)
    # background: TP 1, GT 3 (incl. the unlabelled pixel), predicted 2 -> 1 / (3 + 2 - 1)
    # a: TP 1, GT 2, predicted 2 -> 1/3;  b: TP 1, GT 2, predicted 1 -> 1/2
    # c: absent from GT but predicted once -> 0;  d: in neither -> not counted
    expected = {"background": 1 / 4, "a": 1 / 3, "b": 1 / 2, "c": 0.0, "d": None}
    assert report["iou"].keys() == expected.keys()
    for name, value in expected.items():
        assert report["iou"][name] == (None if value is None else pytest.approx(value))
    assert report["miou"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2 + 0) / 4)
    assert report["pixels"] == 7


def test_split_is_scored_from_the_summed_matrix_not_per_image_means():
    gt1, pred1 = np.array([[1, 1, 1, 0]]), np.array([[1, 1, 1, 1]])
    gt2, pred2 = np.array([[1, 0]]), np.array([[0, 0]])
    acc = SplitConfusion(2)
    acc.add("train", gt1, pred1)
    acc.add("train", gt2, pred2)
    # summed: class 1 TP 3, GT 4, predicted 4 -> 3/5; background TP 1, GT 2, predicted 2 -> 1/3
    report = acc.report(["a"])
    assert report["iou"]["a"] == pytest.approx(3 / 5)
    assert report["miou"] == pytest.approx((3 / 5 + 1 / 3) / 2)
    assert report["images"] == 2 and "splits" not in report
    per_image = np.mean([scores(confusion_matrix(g, p, 2), ["a"])["miou"] for g, p in ((gt1, pred1), (gt2, pred2))])
    assert report["miou"] != pytest.approx(per_image)


def test_several_splits_are_reported_each_and_together():
    acc = SplitConfusion(2)
    acc.add("train", np.array([[1, 1]]), np.array([[1, 1]]))
    acc.add("val", np.array([[1, 0]]), np.array([[0, 0]]))
    report = acc.report(["a"])
    assert report["splits"]["train"]["miou"] == pytest.approx(1.0)
    assert report["splits"]["val"]["iou"] == {"background": pytest.approx(0.5), "a": pytest.approx(0.0)}
    assert report["splits"]["val"]["images"] == 1 and report["images"] == 2
    total = confusion_matrix(np.array([[1, 1, 1, 0]]), np.array([[1, 1, 0, 0]]), 2)
    assert report["miou"] == pytest.approx(scores(total, ["a"])["miou"])


def test_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match="prediction holds label 7"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_iou_is_nan_only_where_a_label_never_occurs():
    iou = iou_per_label(confusion_matrix(np.array([0, 0]), np.array([0, 2]), 3))
    assert iou[0] == pytest.approx(0.5) and iou[2] == 0.0 and np.isnan(iou[1])


def test_cam_labels_use_a_constant_background_that_wins_ties():
    cams = np.array([[[0.9, 0.1, 0.15]], [[0.2, 0.05, 0.15]]], np.float32)  # (2 keys, 1, 3)
    keys = np.array([2, 4])
    np.testing.assert_array_equal(cam_labels(cams, keys, 0.15), [[2, 0, 0]])
    np.testing.assert_array_equal(cam_labels(cams, keys, 0.1), [[2, 0, 2]])
    np.testing.assert_array_equal(cam_labels(np.zeros((0, 1, 3)), np.array([]), 0.15), [[0, 0, 0]])


def test_sweep_matches_scoring_each_threshold_alone():
    rng = np.random.default_rng(0)
    thresholds = sweep_thresholds(0.05, 0.75, 0.05)
    assert len(thresholds) == 15 and 0.15 in thresholds and thresholds[-1] == 0.75
    images = [(rng.integers(0, 4, (6, 7)), rng.random((2, 6, 7)), np.array([1, 3])) for _ in range(3)]
    sweep = ThresholdSweep(thresholds, 4)
    for gt, cams, keys in images:
        sweep.add(gt, cams, keys)
    report = sweep.report(["a", "b", "c"])
    for row in report["thresholds"]:
        alone = sum(confusion_matrix(g, cam_labels(c, k, row["threshold"]), 4) for g, c, k in images)
        assert row["miou"] == pytest.approx(scores(alone, ["a", "b", "c"])["miou"])
    assert report["best"]["miou"] == max(r["miou"] for r in report["thresholds"])


def test_eval_stages_score_files_per_split_and_list_unreadable_ground_truth(tmp_path):
    from ml.data import Dataset, ImageRecord
    from ml.data.palette import save_mask_png
    from ml.runtime import StageContext
    from ml.spec.config import resolve_config
    from ml.spec.layout import cams_name, save_cams
    from ml.stages import eval_cams, eval_masks

    run = tmp_path / "run"
    for stage in ("make_cams", "refine"):
        (run / stage).mkdir(parents=True)
    gt = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    cams = np.array([[[0.1, 0.9, 0.2], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.5, 0.12, 0.0]]], np.float32)
    records = []
    for image_id, split in (("t1", "train"), ("v1", "val"), ("bad", "val")):
        save_mask_png(gt, tmp_path / f"{image_id}_gt.png")
        save_cams(run / "make_cams" / cams_name(image_id), np.array([1, 2]), cams, cams)
        save_mask_png(gt if split == "train" else np.zeros_like(gt), run / "refine" / f"{image_id}.png")
        records.append(ImageRecord(image_id, tmp_path / "x.jpg", (1, 2), tmp_path / f"{image_id}_gt.png", split))
    (tmp_path / "bad_gt.png").write_bytes(b"damaged")
    dataset = Dataset(tmp_path, "manifest", ["a", "b"], records)
    config = resolve_config("cpu-small")
    eval_cams.run(StageContext(dataset, run, config, stage="eval_cams"))
    eval_masks.run(StageContext(dataset, run, config, stage="eval_masks"))
    cam_metrics = json.loads((run / "eval_cams" / "metrics.json").read_text())
    mask_metrics = json.loads((run / "eval_masks" / "metrics.json").read_text())
    # CAMs at 0.15: [[0, 1, 1], [2, 0, 0]] on both images: b loses one pixel to background
    expected = scores(2 * confusion_matrix(gt, np.array([[0, 1, 1], [2, 0, 0]]), 3), ["a", "b"])
    assert cam_metrics["miou"] == pytest.approx(expected["miou"]) and cam_metrics["images"] == 2
    assert cam_metrics["splits"]["val"]["images"] == 1 and set(cam_metrics["unscored"]) == {"bad"}
    assert mask_metrics["splits"]["train"]["miou"] == pytest.approx(1.0)
    assert mask_metrics["splits"]["val"]["iou"] == {"background": pytest.approx(2 / 6), "a": 0.0, "b": 0.0}


def test_all_background_miou_is_the_background_share_over_the_labels_present():
    first = np.zeros((10, 10), np.uint8)
    first[:2] = 1  # 20 pixels of class 1
    second = np.zeros((10, 10), np.uint8)
    second[0, :5] = 2  # 5 pixels of class 2
    second[9] = 255  # 10 ignored pixels
    background, scored = 80 + 85, 100 + 90
    expected = (background / scored) / 3  # background, class 1, class 2 present; classes at IoU 0
    confusion = confusion_matrix(first, np.zeros_like(first), 4) + confusion_matrix(second, np.zeros_like(second), 4)
    assert all_background_miou(confusion, ["a", "b", "c"]) == pytest.approx(expected)

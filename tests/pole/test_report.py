"""The end-of-run report and the progress bars, without running anything (`pole run` itself is
checked end to end in tests/ml/test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ml.data.overlays import CAPTION_HEIGHT
from ml.spec.layout import CONTACT_SHEET, CamFile, cam_panels_name
from pole.progress import ESTIMATE_AFTER_SECONDS, progress_bar, time_left
from pole.report import FIGURE_SIDE, RunReport, ShownImage, print_report, write_figures

SCORES = {
    "CAM": {"miou": 0.3, "iou": {"background": 0.8, "dog": 0.1}, "splits": {"val": {"miou": 0.25, "images": 2}}},
    "mask": {"miou": 0.4, "iou": {"background": 0.85, "dog": 0.2}, "splits": {"val": {"miou": 0.35, "images": 2}}},
}
WARNINGS = [
    {"stage": "preflight", "check": "random_weights", "message": "models.cam_weights is 'random'", "classes": []},
    {"stage": "make_cams", "check": "empty_cams", "message": "dog has empty CAMs", "classes": ["dog"]},
]


def test_the_report_ends_with_the_warnings_all_together(capsys):
    report = RunReport(["dog"], SCORES, 0.12, archives=[Path("run/export/cvat.zip")], warnings=WARNINGS)
    summary = print_report(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "archive: run/export/cvat.zip"
    assert "(for reference, calling every pixel background scores 12.0% mIoU)" in lines
    assert "split val (2 images): CAM mIoU 25.0%, mask mIoU 35.0%" in lines
    assert lines[-2:] == [
        "warning [preflight] models.cam_weights is 'random'",
        "warning [make_cams] dog has empty CAMs",
    ]
    assert lines[-3] == "2 warning(s) about this run:"
    assert summary["splits"] == {"val": {"images": 2, "cam_miou": 0.25, "mask_miou": 0.35}}


def test_a_report_without_warnings_says_nothing_of_them(capsys):
    print_report(RunReport(["dog"], SCORES))
    assert "warning" not in capsys.readouterr().out


def test_the_time_left_shows_only_once_it_means_something():
    assert time_left(10, 1000, 600.0) == ""  # 1% done: the pace of the start says little
    assert time_left(500, 1000, ESTIMATE_AFTER_SECONDS / 2) == ""  # half done, but in a blink
    assert time_left(500, 1000, 60.0) == ", 01:00 left"
    assert time_left(950, 1000, 60.0, initial=900) == ", 01:00 left"  # the pace since the bar opened
    assert time_left(1000, 1000, 60.0) == ""


def test_a_bar_shows_its_percentage_from_the_start(capsys):
    with progress_bar(1000, description_width=8) as bar:
        bar.set_description_str("starting")
    assert "starting   0%|" in capsys.readouterr().err


def test_figures_of_large_photos_are_drawn_at_a_readable_size(tmp_path):
    height, width = 3 * FIGURE_SIDE, 4 * FIGURE_SIDE
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = 1
    cams = CamFile(np.array([1]), np.ones((1, height, width), np.float32), np.ones((1, 1, 1), np.float32))
    photo = ShownImage("p", "val", np.zeros((height, width, 3), np.uint8), mask, mask, cams)
    written = write_figures(tmp_path, [photo], ["dog"], [])
    assert [path.name for path in written] == [CONTACT_SHEET, cam_panels_name("p")]
    with Image.open(written[1]) as panels:
        assert panels.size == (FIGURE_SIDE, FIGURE_SIDE * 3 // 4 + CAPTION_HEIGHT)
    with Image.open(written[0]) as sheet:
        assert sheet.width < 4 * FIGURE_SIDE

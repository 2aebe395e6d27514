import io

import numpy as np
import pytest
from PIL import Image

from ml.data.overlays import LEGEND_HEIGHT, mask_overlay
from ml.data.palette import VOC_PALETTE
from ml.reports import (
    CAPTION_HEIGHT,
    GAP,
    HEADER_HEIGHT,
    SheetRow,
    contact_sheet,
    figure_png,
    miou_table,
    radar_figure,
    word_share_table,
    word_shares,
)

SELECTIONS = [
    {"image": "a", "class": "circle", "chosen": "disc", "candidates": ["circle", "disc", "ring"]},
    {"image": "b", "class": "circle", "chosen": "disc", "candidates": ["circle", "disc", "ring"]},
    {"image": "c", "class": "circle", "chosen": "ring", "candidates": ["circle", "disc", "ring"]},
    {"image": "d", "class": "circle", "chosen": "circle", "candidates": ["circle", "disc", "ring"]},
    {"image": "a", "class": "boat", "chosen": "boat", "candidates": ["boat", "canoe"]},
]


def test_word_shares_count_each_classes_choices_and_keep_unchosen_candidates():
    shares = word_shares(SELECTIONS + [{"image": "e", "class": "star", "chosen": "star", "candidates": ["star"]}])
    assert list(shares) == ["circle", "boat", "star"]
    assert list(word_shares(SELECTIONS, classes=["boat", "circle"])) == ["boat", "circle"]
    assert shares["circle"] == {"circle": 0.25, "disc": 0.5, "ring": 0.25}
    assert shares["boat"] == {"boat": 1.0, "canoe": 0.0}
    assert shares["star"] == {"star": 1.0}
    assert "disc 50%" in word_share_table(shares).splitlines()[0]


def test_radar_has_one_polar_panel_per_class_with_the_shares_as_radii():
    shares = word_shares(SELECTIONS)
    figure = radar_figure(shares, columns=4)
    assert [axes.name for axes in figure.axes] == ["polar", "polar"]
    assert [axes.get_title() for axes in figure.axes] == ["circle", "boat"]
    radii = figure.axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(radii, [0.25, 0.5, 0.25, 0.25])  # closed back onto the first spoke
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["circle", "disc", "ring"]
    png = Image.open(io.BytesIO(figure_png(figure, dpi=50)))
    assert png.format == "PNG" and png.size[0] > png.size[1]  # two panels side by side


def test_radar_wraps_classes_into_rows_and_refuses_nothing_to_plot():
    shares = {f"class{i}": {"a": 0.5, "b": 0.25, "c": 0.25} for i in range(5)}
    png = Image.open(io.BytesIO(figure_png(radar_figure(shares, columns=3), dpi=40)))
    assert png.size[1] > png.size[0] * 0.55  # two rows of three panels
    with pytest.raises(ValueError, match="no selections"):
        radar_figure({})


def test_contact_sheet_lays_out_image_truth_and_mask_per_row():
    rng = np.random.default_rng(0)
    rows = []
    for index in range(3):
        image = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
        truth = np.zeros((32, 40), np.uint8)
        truth[4:20, 4:20] = index + 1
        mask = np.zeros((32, 40), np.uint8)
        mask[10:30, 10:30] = 2
        rows.append(SheetRow(f"img{index}", image, truth, mask))
    rows[2].ground_truth = None
    sheet = contact_sheet(rows, ["circle", "square", "star"])
    assert sheet.format is None and sheet.mode == "RGB"
    row_height = CAPTION_HEIGHT + 32 + GAP
    assert sheet.size == (max(3 * (40 + GAP) - GAP, 240), HEADER_HEIGHT + 3 * row_height + LEGEND_HEIGHT)
    pixels = np.asarray(sheet)
    for index, row in enumerate(rows):
        top = HEADER_HEIGHT + index * row_height + CAPTION_HEIGHT
        panels = [pixels[top : top + 32, column * (40 + GAP) : column * (40 + GAP) + 40] for column in range(3)]
        np.testing.assert_array_equal(panels[0], row.image)
        np.testing.assert_array_equal(panels[2], np.asarray(mask_overlay(row.image, row.mask)))
        if row.ground_truth is not None:
            np.testing.assert_array_equal(panels[1], np.asarray(mask_overlay(row.image, row.ground_truth)))
        else:
            assert (panels[1] == 255).mean() > 0.8  # white, with only a note in it
    legend = pixels[-LEGEND_HEIGHT:]
    for label in (1, 2, 3):
        assert (legend == VOC_PALETTE[label]).all(axis=-1).any()


def test_contact_sheet_legend_wraps_onto_more_lines_when_classes_do_not_fit():
    image = np.zeros((20, 20, 3), np.uint8)
    row = SheetRow("a", image, None, np.zeros((20, 20), np.uint8))
    classes = [f"class-with-a-long-name-{i}" for i in range(1, 7)]
    one_line = contact_sheet([row], classes[:1])
    wrapped = np.asarray(contact_sheet([row], classes))
    lines = (wrapped.shape[0] - one_line.size[1]) // LEGEND_HEIGHT + 1
    assert lines > 1
    legend = wrapped[-lines * LEGEND_HEIGHT :]
    for label in range(1, 7):
        assert (legend == VOC_PALETTE[label]).all(axis=-1).any()


def test_contact_sheet_needs_rows():
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([], ["circle"])


def test_miou_table_prints_percentages_and_dashes_for_absent_labels():
    stages = {
        "CAM": {"miou": 0.5, "iou": {"background": 0.8, "circle": 0.2, "star": None}},
        "mask": {"miou": 0.625, "iou": {"background": 0.9, "circle": 0.35}},
    }
    lines = miou_table(stages, ["circle", "star"]).splitlines()
    assert lines[0].split() == ["CAM", "mask"]
    assert lines[1].split() == ["mIoU", "50.0%", "62.5%"]
    assert lines[3].split() == ["circle", "20.0%", "35.0%"]
    assert lines[4].split() == ["star", "-", "-"]

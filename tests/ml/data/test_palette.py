import numpy as np
import pytest
from PIL import Image

from ml.data.layouts.voc import VOC_CLASSES, voc_label
from ml.data.palette import VOC_PALETTE, colorize, labelmap_txt, save_mask_png

# Rows of the table in the VOC reference: index -> RGB.
REFERENCE_COLOURS = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    8: (64, 0, 0),
    11: (192, 128, 0),
    15: (192, 128, 128),
    16: (0, 64, 0),
    20: (0, 64, 128),
    255: (224, 224, 192),
}


def test_palette_matches_reference_colours():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    for index, rgb in REFERENCE_COLOURS.items():
        assert tuple(VOC_PALETTE[index]) == rgb, index


def test_palette_colours_are_distinct():
    assert len({tuple(c) for c in VOC_PALETTE}) == 256


def test_palette_is_read_only():
    with pytest.raises(ValueError):
        VOC_PALETTE[0] = (1, 2, 3)


def test_mask_png_round_trip_keeps_indices(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, size=(7, 9), dtype=np.uint8)
    mask[0, :] = 255
    path = tmp_path / "m.png"
    save_mask_png(mask, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), mask)
        palette = np.frombuffer(bytes(im.getpalette()), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[:256], VOC_PALETTE)


def test_save_mask_refuses_wrong_shape_and_range(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        save_mask_png(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.png")
    with pytest.raises(ValueError, match="0..255"):
        save_mask_png(np.full((2, 2), 300, np.int32), tmp_path / "b.png")


def test_colorize_uses_palette():
    mask = np.array([[0, 1], [255, 20]], dtype=np.uint8)
    rgb = colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == REFERENCE_COLOURS[1]
    assert tuple(rgb[1, 0]) == REFERENCE_COLOURS[255]
    assert tuple(rgb[1, 1]) == REFERENCE_COLOURS[20]


def test_labelmap_txt_is_cvat_form():
    lines = labelmap_txt(["cat", "diningtable"]).splitlines()
    assert lines == [
        "# label:color_rgb:parts:actions",
        "background:0,0,0::",
        "cat:128,0,0::",
        "diningtable:0,128,0::",
        "ignored:224,224,192::",  # the colour of 255, which masks hold: an importer refuses an undeclared colour
    ]


def test_voc_classes_and_xml_spellings():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[19] == "tv monitor"
    assert voc_label("diningtable") == VOC_CLASSES.index("dining table") + 1
    assert voc_label("TVMonitor") == 20
    assert voc_label("pottedplant") == 16
    assert voc_label("unicorn") is None

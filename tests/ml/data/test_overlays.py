import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ml.data.overlays import (
    CAPTION_HEIGHT,
    LEGEND_HEIGHT,
    cam_heatmaps,
    cam_heatmaps_png,
    mask_overlay,
    mask_overlay_png,
    png_bytes,
)
from ml.data.palette import VOC_PALETTE


def _image(height: int = 30, width: int = 40) -> np.ndarray:
    return np.full((height, width, 3), 100, np.uint8)


def test_mask_overlay_tints_classes_keeps_background_and_hatches_ignore():
    image = _image()
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:15] = 1  # VOC colour (128, 0, 0)
    mask[20:30, 30:40] = 255
    out = np.asarray(mask_overlay(image, mask, alpha=0.5))
    assert out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    np.testing.assert_array_equal(out[10, 10], [114, 50, 50])  # halfway between (100, 100, 100) and (128, 0, 0)
    ignore = out[mask == 255]
    assert (ignore == VOC_PALETTE[255]).all(axis=1).any() and (ignore == 100).all(axis=1).any()


def test_mask_overlay_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="differ in size"):
        mask_overlay(_image(), np.zeros((10, 10), np.uint8))


def test_heatmaps_have_one_named_panel_per_tagged_class():
    image = _image()
    cams = np.zeros((2, 30, 40), np.float32)
    cams[0, :, :20] = 1.0
    sheet = cam_heatmaps(image, cams, [2, 3], ["cat", "dog", "bird"], alpha=1.0)
    assert sheet.size == (80, 30 + CAPTION_HEIGHT)
    pixels = np.asarray(sheet).astype(int)
    hot, cold = pixels[CAPTION_HEIGHT + 5, 5], pixels[CAPTION_HEIGHT + 5, 30]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: 1 is red, 0 is blue
    caption = pixels[:CAPTION_HEIGHT]
    assert (caption[:, :40] < 128).any() and (caption[:, 40:] < 128).any()  # a name drawn over each panel


def test_an_empty_cam_shows_the_faded_image_with_a_note_instead_of_a_colour_map():
    image = _image()
    cams = np.zeros((2, 30, 40), np.float32)
    cams[1] = 0.5
    pixels = np.asarray(cam_heatmaps(image, cams, [1, 2], ["cat", "dog"], alpha=1.0)).astype(int)
    empty, lit = pixels[CAPTION_HEIGHT:, :40], pixels[CAPTION_HEIGHT:, 40:]
    faded = (100 + 255) // 2 + 1  # halfway to white, rounded
    assert (empty[-10:] == faded).all()  # below the note: the image, no colour map
    assert (empty[:12] < 100).any()  # the note, written in black
    assert not (lit == faded).all(axis=-1).any()  # a map that is not empty keeps its colours


def test_heatmaps_of_an_untagged_image_show_the_image():
    sheet = cam_heatmaps(_image(), np.zeros((0, 30, 40)), [], ["cat"])
    assert sheet.size == (40, 30 + CAPTION_HEIGHT)
    with pytest.raises(ValueError, match="2 keys"):
        cam_heatmaps(_image(), np.zeros((1, 30, 40)), [1, 2], ["cat", "dog"])


def test_png_helpers_give_decodable_pngs():
    image, mask = _image(), np.zeros((30, 40), np.uint8)
    for data in (mask_overlay_png(image, mask, ["cat"]), cam_heatmaps_png(image, np.ones((1, 30, 40)), [1], ["cat"])):
        assert Image.open(io.BytesIO(data)).format == "PNG"
    assert png_bytes(Image.new("RGB", (2, 2))).startswith(b"\x89PNG")


def test_the_overlay_png_carries_a_legend_of_every_class_colour_under_the_image():
    classes = ["cat", "dog", "bird"]
    mask = np.zeros((30, 160), np.uint8)
    mask[:, 40:80] = 2
    image = np.full((30, 160, 3), 100, np.uint8)
    png = np.asarray(Image.open(io.BytesIO(mask_overlay_png(image, mask, classes))).convert("RGB"))
    assert png.shape == (30 + LEGEND_HEIGHT, 160, 3)  # three short names fit on one line
    np.testing.assert_array_equal(png[:30], np.asarray(mask_overlay(image, mask)))
    legend = png[30:]
    for label in (1, 2, 3):
        assert (legend == VOC_PALETTE[label]).all(axis=-1).any(), classes[label - 1]
    narrow = Image.open(io.BytesIO(mask_overlay_png(image[:, :40], mask[:, :40], classes)))
    assert narrow.size == (40, 30 + 3 * LEGEND_HEIGHT)  # one class per line


def test_overlays_import_without_torch():
    code = "import sys, ml.data.overlays; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0

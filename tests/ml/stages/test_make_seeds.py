import json

import numpy as np
import pytest
from PIL import Image

from ml.data import Dataset, ImageRecord
from ml.data.images import read_mask
from ml.dense_crf import crf_labels, crf_mask
from ml.runtime import StageContext
from ml.spec.config import CrfParams, MakeSeedsConfig, resolve_config
from ml.spec.layout import cams_name, save_cams
from ml.stages import make_seeds
from ml.stages.make_seeds import combine_seeds, seeds_from_cams

HEIGHT, WIDTH = 48, 72
KEYS = np.array([1, 3])
# Each object: a confident core (CAM 0.9) inside a halo of its own colour where the CAM is weak
# (0.15: above the 0.05 background of the low map, below the 0.30 of the high one).
OBJECTS = (  # (label, halo box, core box, halo colour, core colour), boxes as (y0, y1, x0, x1)
    (1, (8, 40, 4, 32), (14, 34, 10, 26), (200, 170, 60), (220, 40, 40)),
    (3, (6, 42, 40, 70), (14, 34, 48, 62), (60, 200, 200), (40, 60, 230)),
)


def synthetic_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, cams for KEYS, the seeds the regions call for)."""
    image = np.full((HEIGHT, WIDTH, 3), 120, np.uint8)
    cams = np.zeros((len(KEYS), HEIGHT, WIDTH), np.float32)
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    for index, (label, halo, core, halo_colour, core_colour) in enumerate(OBJECTS):
        for (y0, y1, x0, x1), colour, score, seed in ((halo, halo_colour, 0.15, 255), (core, core_colour, 0.9, label)):
            image[y0:y1, x0:x1] = colour
            cams[index, y0:y1, x0:x1] = score
            expected[y0:y1, x0:x1] = seed
    return image, cams, expected


def test_seeds_of_a_synthetic_cam_follow_its_regions():
    image, cams, expected = synthetic_scene()
    seeds = seeds_from_cams(image, cams, KEYS, MakeSeedsConfig())
    np.testing.assert_array_equal(seeds, expected)


def test_thresholds_are_configurable():
    image, cams, expected = synthetic_scene()
    # a high-map background below the halo score makes the halos confident objects too
    seeds = seeds_from_cams(image, cams, KEYS, MakeSeedsConfig(fg_threshold=0.1))
    halo_of_first = (expected == 255) & (np.arange(WIDTH) < 36)
    assert (seeds[halo_of_first] == 1).all() and not (seeds == 255).any()
    # a low-map background above the halo score makes the halos confident background
    seeds = seeds_from_cams(image, cams, KEYS, MakeSeedsConfig(bg_threshold=0.2))
    assert (seeds[expected == 255] == 0).all()


def test_combine_keeps_confident_classes_and_marks_disagreement_unknown():
    fg = np.array([[0, 2, 0, 0]])
    bg = np.array([[0, 2, 2, 5]])
    np.testing.assert_array_equal(combine_seeds(fg, bg), [[0, 2, 255, 255]])


def test_crf_wrapper_keeps_label_sets_and_smooths_a_stray_pixel():
    image = np.full((20, 20, 3), 100, np.uint8)
    image[:, 10:] = 220
    labels = np.zeros((20, 20), np.int64)
    labels[:, 10:] = 1
    labels[5, 3] = 1  # a lone wrong pixel in the dark half
    out = crf_labels(image, labels, 2, CrfParams())
    assert out[5, 3] == 0 and (out[:, 12:] == 1).all() and (out[:, :8] == 0).all()
    mask = np.where(labels == 1, 7, 0).astype(np.uint8)
    assert set(np.unique(crf_mask(image, mask, [0, 7], CrfParams()))) == {0, 7}
    with pytest.raises(ValueError, match="outside"):
        crf_mask(image, mask, [0, 3], CrfParams())


def test_stage_writes_a_seed_png_per_image_and_drops_unreadable_ones(tmp_path):
    image, cams, expected = synthetic_scene()
    root, run = tmp_path / "data", tmp_path / "run"
    (root / "images").mkdir(parents=True)
    (run / "make_cams").mkdir(parents=True)
    Image.fromarray(image).save(root / "images" / "good.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    records = []
    for name in ("good", "broken"):
        records.append(ImageRecord(name, root / "images" / f"{name}.png", tuple(KEYS)))
        save_cams(run / "make_cams" / cams_name(name), KEYS, cams, cams[:, ::4, ::4])
    dataset = Dataset(root, "manifest", ["a", "b", "c"], records)
    ctx = StageContext(dataset, run, resolve_config("cpu-small"), stage="make_seeds")
    make_seeds.run(ctx)
    np.testing.assert_array_equal(read_mask(run / "make_seeds" / "good.png"), expected)
    assert not (run / "make_seeds" / "broken.png").exists()
    assert "broken" in ctx.failed_images and "broken" in json.loads((run / "failed_images.json").read_text())
    assert json.loads((run / "make_seeds" / "stage.json").read_text())["images"] == 1

"""Training makes masks: `pole run` on a sample world with the shipped tiny CLIP beats all-background.

Predicting background everywhere scores about 11% mIoU in the world (objects cover a tenth of the
pixels, 7 classes plus background). The CAM network trains from scratch, so what a run reaches
depends on how many different images it sees: the demo preset (800 images, 600 steps, about four
minutes on two cores) clears +10 points; the default-suite run (120 images, about a minute) clears
+5, which no untrained or collapsed network does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml.data import load_dataset
from ml.data.images import read_mask
from ml.world.writer import make_world
from pole.cli import main
from tests.conftest import all_background_miou

# The demo preset shortened to fit the default suite: a small world, every image trained on (pseudo
# masks are for the images a user gives, no held-out split needed), one epoch of CLIP guidance, and
# no segmenter (tests/ml/stages/test_train_seg.py trains one).
FAST_CONFIG = {
    "train_split": "",
    "train_cam": {"epochs": 40},
    "train_pole": {"epochs": 1},
    "make_cams": {"scales": [1.0, 1.5]},
    "train_irn": {"epochs": 2},
    "train_seg": {"enabled": False},
}


def run_world(tmp_path: Path, images: int, seed: int, holdout: float, config: dict) -> tuple[float, float, float]:
    """(all-background mIoU, CAM mIoU, mask mIoU) of `pole run --preset demo` on a fresh world."""
    world = tmp_path / "world"
    make_world(world, images, seed=seed, size=96, holdout=holdout)
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    args = ["run", str(world), "--out", str(out), "--preset", "demo", "--config", str(tmp_path / "config.json")]
    assert main(args) == 0
    record = json.loads((out / "train_pole" / "stage.json").read_text())
    assert record["weights"]["clip"]["source"] == "pole-world"  # the shipped CLIP guided the training
    cams = json.loads((out / "eval_cams" / "metrics.json").read_text())["miou"]
    masks = json.loads((out / "eval_masks" / "metrics.json").read_text())["miou"]
    dataset = load_dataset(world)
    return all_background_miou((read_mask(r.mask) for r in dataset.images), dataset.classes), cams, masks


def test_a_short_run_on_a_small_world_beats_all_background(tmp_path):
    background, cams, masks = run_world(tmp_path, images=120, seed=3, holdout=0.0, config=FAST_CONFIG)
    assert masks >= background + 0.05, (background, cams, masks)
    assert cams >= background + 0.03, (background, cams, masks)


@pytest.mark.slow
def test_the_demo_preset_beats_all_background_by_ten_points(tmp_path):
    background, cams, masks = run_world(tmp_path, images=800, seed=0, holdout=0.2, config={})
    assert masks >= background + 0.10, (background, cams, masks)

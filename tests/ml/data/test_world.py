import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data import load_dataset, world
from ml.spec.config import resolve_config
from pole.cli import main


def read_rows(root: Path) -> list[dict]:
    with open(root / "tags.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def scenes() -> list[world.Scene]:
    return [world.render_scene(world.scene_rng(11, i)) for i in range(300)]


def test_world_files_follow_the_manifest_layout_and_masks_match_tags(tmp_path):
    summary = world.make_world(tmp_path / "w", n=30, seed=3, holdout=0.2)
    root = tmp_path / "w"
    classes = (root / "classes.txt").read_text().split()
    assert classes == world.class_names() and len(classes) >= 6
    rows = read_rows(root)
    assert list(rows[0]) == ["image", "tags", "split"] and len(rows) == 30
    assert [r["split"] for r in rows] == ["train"] * 24 + ["val"] * 6
    assert summary["splits"] == {"train": 24, "val": 6}
    for row in rows:
        image = Image.open(root / "images" / row["image"])
        mask = np.asarray(Image.open(root / "masks" / row["image"]))
        assert image.mode == "RGB" and image.size == (128, 128) and mask.shape == (128, 128)
        present = {classes[v - 1] for v in np.unique(mask) if v != 0}
        assert present == set(row["tags"].split("|"))
    with open(root / "synonyms.csv", newline="") as f:
        synonyms = {r[0]: r[1:] for r in list(csv.reader(f))[1:]}
    assert synonyms == world.synonyms()


def test_world_is_deterministic_for_a_seed_and_prefix_stable(tmp_path):
    world.make_world(tmp_path / "a", n=12, seed=5)
    world.make_world(tmp_path / "b", n=12, seed=5)
    world.make_world(tmp_path / "c", n=6, seed=5)
    world.make_world(tmp_path / "d", n=12, seed=6)
    for name in ("img00000", "img00005", "img00011"):
        for folder in ("images", "masks"):
            a = (tmp_path / "a" / folder / f"{name}.png").read_bytes()
            assert a == (tmp_path / "b" / folder / f"{name}.png").read_bytes()
    same_prefix = (tmp_path / "c" / "images" / "img00005.png").read_bytes()
    assert same_prefix == (tmp_path / "a" / "images" / "img00005.png").read_bytes()
    other_seed = [(tmp_path / "d" / "images" / f"img{i:05d}.png").read_bytes() for i in range(12)]
    assert all(o != (tmp_path / "a" / "images" / f"img{i:05d}.png").read_bytes() for i, o in enumerate(other_seed))


def test_every_class_shows_both_variants_and_objects_vary(scenes):
    variants = Counter(o.variant for s in scenes for o in s.objects)
    for cls in world.CLASSES:
        assert all(variants[v] >= 10 for v in cls.variants), (cls.name, variants)
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3}
    sides = [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for s in scenes for o in s.objects]
    assert min(sides) < 30 and max(sides) > 60
    # Occlusion: some objects overlap, yet every object keeps enough pixels for its tag to hold.
    overlapping = sum(
        1
        for s in scenes
        for i, a in enumerate(s.objects)
        for b in s.objects[i + 1 :]
        if a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]
    )
    assert overlapping >= 10
    assert all(o.mask.sum() >= world.MIN_VISIBLE_PIXELS for s in scenes for o in s.objects)


def test_context_backgrounds_follow_their_classes(scenes):
    for cls in (c for c in world.CLASSES if c.context):
        label = world.class_names().index(cls.name) + 1
        with_class = [s for s in scenes if label in s.tags]
        without = [s for s in scenes if label not in s.tags and not any(world.CLASSES[t - 1].context for t in s.tags)]
        on_context = np.mean([s.context == cls.context for s in with_class])
        stray = np.mean([s.context == cls.context for s in without])
        assert on_context >= 0.7 and stray <= 0.2, (cls.name, on_context, stray)
    seen = {s.context for s in scenes}
    assert set(world.CONTEXTS) <= seen
    # The context mask is background in the labels and lies where the context was painted.
    for s in scenes:
        assert not s.context_mask.any() if s.context is None else (s.label[s.context_mask] == 0).all()
    assert set(world.background_words()) >= {"water", "railway"}


def test_ml_data_world_does_not_import_torch():
    code = "import sys, ml.data.world; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_world_make_command(tmp_path, capsys):
    assert main(["world", "make", str(tmp_path / "w"), "--n", "5", "--seed", "2", "--size", "64"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert Image.open(tmp_path / "w" / "images" / "img00004.png").size == (64, 64)
    assert main(["world", "make", str(tmp_path / "x"), "--n", "5", "--holdout", "1.5"]) == 2


def test_demo_preset_uses_the_world_clip_and_its_context_words():
    config = resolve_config("demo")
    assert (config.models.clip_model, config.models.clip_pretrained) == ("pole-tiny", "pole-world")
    assert config.train_pole.background_words == world.background_words()
    assert config.select_prompts.num_synonyms >= max(len(c.variants) for c in world.CLASSES)
    assert config.train_split == "train"


def test_the_dataset_reader_accepts_a_world(tmp_path):
    world.make_world(tmp_path / "w", n=10, seed=1, holdout=0.3)
    dataset = load_dataset(tmp_path / "w")
    assert dataset.layout == "manifest" and dataset.classes == world.class_names() and dataset.has_masks
    assert dataset.synonyms == world.synonyms()
    assert (len(dataset.split("train")), len(dataset.split("val"))) == (7, 3)

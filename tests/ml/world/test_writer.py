"""A world written as a dataset: the manifest layout, determinism, `pole world make`, the dataset reader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ml.data import load_dataset
from ml.world import scenes as world
from ml.world.writer import make_world
from pole.cli import main


def read_rows(root: Path) -> list[dict]:
    with open(root / "tags.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_world_files_follow_the_manifest_layout_and_masks_match_tags(tmp_path):
    summary = make_world(tmp_path / "w", n=30, seed=3, holdout=0.2)
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
    make_world(tmp_path / "a", n=12, seed=5)
    make_world(tmp_path / "b", n=12, seed=5)
    make_world(tmp_path / "c", n=6, seed=5)
    make_world(tmp_path / "d", n=12, seed=6)
    for name in ("img00000", "img00005", "img00011"):
        for folder in ("images", "masks"):
            a = (tmp_path / "a" / folder / f"{name}.png").read_bytes()
            assert a == (tmp_path / "b" / folder / f"{name}.png").read_bytes()
    same_prefix = (tmp_path / "c" / "images" / "img00005.png").read_bytes()
    assert same_prefix == (tmp_path / "a" / "images" / "img00005.png").read_bytes()
    other_seed = [(tmp_path / "d" / "images" / f"img{i:05d}.png").read_bytes() for i in range(12)]
    assert all(o != (tmp_path / "a" / "images" / f"img{i:05d}.png").read_bytes() for i, o in enumerate(other_seed))


def test_world_make_command(tmp_path, capsys):
    assert main(["world", "make", str(tmp_path / "w"), "--n", "5", "--seed", "2", "--size", "64"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert Image.open(tmp_path / "w" / "images" / "img00004.png").size == (64, 64)
    assert main(["world", "make", str(tmp_path / "x"), "--n", "5", "--holdout", "1.5"]) == 2


def test_the_dataset_reader_accepts_a_world(tmp_path):
    make_world(tmp_path / "w", n=10, seed=1, holdout=0.3)
    dataset = load_dataset(tmp_path / "w")
    assert dataset.layout == "manifest" and dataset.classes == world.class_names() and dataset.has_masks
    assert dataset.synonyms == world.synonyms()
    assert (len(dataset.split("train")), len(dataset.split("val"))) == (7, 3)

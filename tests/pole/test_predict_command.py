"""`pole predict` as a user runs it: a run directory holding a trained segmenter (random weights, as
train_seg writes it), images given as files, folders and zips, one of them corrupt; no server."""

from __future__ import annotations

import json
import zipfile

import numpy as np
from PIL import Image

from ml.spec.layout import PredictionLayout, RunLayout
from pole.cli import main
from tests.app.finished_job import save_random_segmenter
from tests.conftest import TINY_CLASSES


def noise(path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise(size, 50).convert("RGB").save(path)


def test_predict_labels_files_folders_and_zips_and_lists_what_failed(tmp_path, capsys):
    run = tmp_path / "run"
    save_random_segmenter(RunLayout(run).segmenter, list(TINY_CLASSES), {})
    folder = tmp_path / "photos"
    noise(folder / "a.png", (30, 20))
    noise(folder / "sub" / "b.jpg", (16, 16))
    noise(folder / ".thumbs" / "a.png", (8, 8))  # hidden: not an image to label
    noise(tmp_path / "c.png", (30, 20))
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.write(tmp_path / "c.png", "more/c.png")
        archive.writestr("more/broken.png", (tmp_path / "c.png").read_bytes()[:50])
    noise(tmp_path / "d.bmp", (12, 9))
    out = tmp_path / "labelled"

    code = main(["predict", str(run), str(folder), str(tmp_path / "more.zip"), str(tmp_path / "d.bmp"),
                 "--out", str(out), "--format", "coco"])  # fmt: skip

    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "labelled 4 of 5 image(s)" in printed.out and f"archive: {out}/export/coco.zip" in printed.out
    assert f"failed: {tmp_path}/more.zip/broken.png: " in printed.err
    layout = PredictionLayout(out)
    for image_id, size in {"a": (30, 20), "b": (16, 16), "c": (30, 20), "d": (12, 9)}.items():
        mask = Image.open(layout.mask(image_id))
        assert mask.size == size and np.asarray(mask).max() <= len(TINY_CLASSES)
        assert Image.open(layout.overlay(image_id)).width == size[0]
    assert sorted(p.name for p in layout.masks_dir.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    with zipfile.ZipFile(layout.archive("coco")) as archive:
        instances = json.loads(archive.read("annotations/instances_default.json"))
        assert "broken.png" in archive.read("failed_images.csv").decode()
    assert len(instances["images"]) == 4 and [c["name"] for c in instances["categories"]] == list(TINY_CLASSES)


def test_predict_without_a_segmenter_says_so_in_one_line(tmp_path, capsys):
    noise(tmp_path / "a.png", (8, 8))
    code = main(["predict", str(tmp_path / "run"), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'run'} has no trained segmenter") and '"train_seg"' in err
    assert not (tmp_path / "out").exists()

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from ml.data import DatasetError, load_dataset
from ml.data.readers import read_dataset, resolve_dataset_path
from tests.conftest import TINY_CLASSES, TINY_TAGS
from tests.ml.data.builders import good_manifest, problems_of, write_manifest


def test_tiny_dataset_fixture_reads(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    assert dataset.classes == list(TINY_CLASSES)
    assert [im.tags for im in dataset.images] == [tuple(sorted(t)) for t in TINY_TAGS]
    assert all(im.mask is not None for im in dataset.images)


def test_wrapping_folders_are_looked_into(tmp_path):
    good_manifest(tmp_path / "outer" / "inner")
    dataset = read_dataset(tmp_path / "outer")
    assert dataset.root == tmp_path / "outer" / "inner" and len(dataset.images) == 3


def test_empty_dataset(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat"], [])
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [".: the dataset lists no images"]


def test_no_layout(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "readme.txt").write_text("hi")
    (tmp_path / "ds" / "pics").mkdir()
    with pytest.raises(DatasetError, match=r"no dataset layout found \(it holds: pics, readme.txt\)"):
        read_dataset(tmp_path / "ds")


def test_both_layouts_is_ambiguous(tmp_path):
    root = good_manifest(tmp_path / "ds")
    (root / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match="keep one layout"):
        read_dataset(root)


# --- skip_bad --------------------------------------------------------------------------------------


def test_skip_bad_drops_and_lists(tmp_path):
    root = write_manifest(
        tmp_path / "ds",
        ["cat"],
        ["a.jpg,cat", "b.jpg,dgo", "missing.jpg,cat", "d.jpg,cat"],
        images={"a.jpg": (8, 8), "b.jpg": (8, 8), "d.jpg": (8, 8)},
        masks={"d": np.zeros((3, 3), np.uint8)},
    )
    dataset = read_dataset(root, skip_bad=True)
    assert [im.id for im in dataset.images] == ["a"]
    assert [str(p).split(";")[0].split(" (")[0] for p in dataset.skipped] == [
        "tags.csv:3: unknown tag 'dgo'",
        "tags.csv:4: image file images/missing.jpg not found",
        "masks/d.png: mask is 3x3 but its image is 8x8",
    ]


def test_skip_bad_keeps_dataset_problems_fatal(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat", "cat"], ["a.jpg,cat", "b.jpg,dgo"], images={"a.jpg": (8, 8)})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root, skip_bad=True)
    assert problems_of(excinfo)[0] == "classes.txt:2: class 'cat' listed twice (first at line 1)"


def test_skip_bad_with_nothing_left(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat"], ["a.jpg,dog"], images={"a.jpg": (8, 8)})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root, skip_bad=True)
    assert problems_of(excinfo)[-1] == ".: no usable images left after dropping bad ones"


# --- zip input -------------------------------------------------------------------------------------


def zip_folder(folder, zip_path, wrap="mydata"):
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{wrap}/{path.relative_to(folder).as_posix()}")
    return zip_path


def test_zip_input_extracted_once(tmp_path):
    zip_path = zip_folder(good_manifest(tmp_path / "ds"), tmp_path / "ds.zip")
    run = tmp_path / "run"
    folder = resolve_dataset_path(zip_path, run)
    assert folder == run / "dataset" and (folder / "classes.txt").is_file()
    dataset = load_dataset(folder)
    assert [im.id for im in dataset.images] == ["a", "b", "c"]
    marker = folder / "images" / "a.jpg"
    mtime = marker.stat().st_mtime_ns
    assert resolve_dataset_path(zip_path, run) == folder and marker.stat().st_mtime_ns == mtime


def test_folder_is_returned_as_is(tmp_path):
    root = good_manifest(tmp_path / "ds")
    assert resolve_dataset_path(root, tmp_path / "run") == root
    assert not (tmp_path / "run").exists()


def test_bad_zip_refused_as_dataset_error(tmp_path):
    zip_path = tmp_path / "ds.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("../evil.txt", "x")
    with pytest.raises(DatasetError, match=r"ds.zip: member '\.\./evil.txt' has a '\.\.' component"):
        resolve_dataset_path(zip_path, tmp_path / "run")
    assert not (tmp_path / "run" / "dataset").exists()


def test_read_dataset_needs_a_folder(tmp_path):
    zip_path = zip_folder(good_manifest(tmp_path / "ds"), tmp_path / "ds.zip")
    with pytest.raises(DatasetError, match="resolve_dataset_path"):
        load_dataset(zip_path)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope")


def test_progress_follows_the_images_checked_and_an_exception_from_it_stops_the_checks(tmp_path):
    root = good_manifest(tmp_path / "ds")
    seen = []
    read_dataset(root, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def stop(_done, _total):
        raise InterruptedError("stopped")

    with pytest.raises(InterruptedError):
        read_dataset(root, progress=stop)

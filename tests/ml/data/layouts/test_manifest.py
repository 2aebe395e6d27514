from __future__ import annotations

import numpy as np
import pytest

from ml.data import DatasetError
from ml.data.readers import read_dataset
from tests.ml.data.builders import (
    GOOD_MANIFEST_CLASSES,
    good_manifest,
    png_header_only,
    problems_of,
    write_image,
    write_manifest,
)


def test_manifest_read(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:9] = 1
    mask[0] = 255
    root = good_manifest(tmp_path / "ds", masks={"a": mask})
    dataset = read_dataset(root)
    assert dataset.layout == "manifest" and dataset.root == root
    assert dataset.classes == GOOD_MANIFEST_CLASSES and dataset.num_classes == 3
    assert dataset.label_names == GOOD_MANIFEST_CLASSES  # the classes as written: exports name them so
    assert [(im.id, im.tags, im.split) for im in dataset.images] == [
        ("a", (1,), "train"),
        ("b", (2, 3), "train"),
        ("c", (1,), "train"),
    ]
    assert dataset.by_id("a").mask == root / "masks" / "a.png" and dataset.by_id("b").mask is None
    assert dataset.by_id("b").image == root / "images" / "b.png"
    assert dataset.has_masks and dataset.skipped == [] and dataset.synonyms == {}


def test_manifest_split_column_and_split_filter(tmp_path):
    root = write_manifest(
        tmp_path / "ds",
        ["cat"],
        ["a.jpg,cat,train", "b.jpg,cat,val", "c.jpg,cat,"],
        images={"a.jpg": (8, 8), "b.jpg": (8, 8), "c.jpg": (8, 8)},
        header="image,tags,split",
    )
    assert [(im.id, im.split) for im in read_dataset(root).images] == [("a", "train"), ("b", "val"), ("c", "train")]
    assert [im.id for im in read_dataset(root, split="val").images] == ["b"]
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root, split="test")
    assert problems_of(excinfo) == ["tags.csv: no images in split 'test'; splits present: train, val"]


def test_every_manifest_problem_reported_with_file_and_line(tmp_path):
    root = write_manifest(
        tmp_path / "ds",
        ["cat", "dog", "Cat"],
        [
            "a.jpg,cat",  # 2: fine
            "b.jpg,dgo",  # 3: unknown tag
            "c.jpg,",  # 4: no tags
            "missing.jpg,cat",  # 5: no such file
            "corrupt.jpg,dog",  # 6: truncated JPEG
            "e.jpg,cat",  # 7: mask of the wrong size
            "f.jpg,cat",  # 8: mask values outside the classes
            "a.png,dog",  # 9: id 'a' again
            "g.jpg,cat,dog",  # 10: commas between tags
            "../h.jpg,cat",  # 11: not a file name
            "I.JPG,cat",  # 12: wrong case
            "notimage.jpg,cat",  # 13: text
            "huge.png,cat",  # 14: bomb
        ],
        images={n: (10, 8) for n in ["a.jpg", "b.jpg", "c.jpg", "e.jpg", "f.jpg", "a.png", "g.jpg", "i.jpg"]},
        masks={"e": np.zeros((5, 5), np.uint8), "f": np.array([[0, 3, 4], [9, 255, 1]], np.uint8)},
    )
    write_image(root / "images" / "f.jpg", size=(3, 2))
    whole = write_image(root / "images" / "corrupt.jpg", size=(64, 64)).read_bytes()
    (root / "images" / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "images" / "notimage.jpg").write_text("hello")
    (root / "images" / "huge.png").write_bytes(png_header_only(20000, 20000))
    (root / "synonyms.csv").write_text("class,a\nbird,avian\n")

    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    found = problems_of(excinfo)
    valid = "valid classes: cat, dog, Cat"
    expected_prefixes = [
        "classes.txt:3: class 'Cat' listed twice (first at line 1)",
        f"synonyms.csv:2: unknown class 'bird'; {valid}",
        f"tags.csv:3: unknown tag 'dgo'; {valid}",
        "tags.csv:4: image without tags",
        "tags.csv:5: image file images/missing.jpg not found",
        "images/corrupt.jpg: JPEG data is truncated or corrupt",
        "masks/e.png: mask is 5x5 but its image is 10x8 (listed at tags.csv:7)",
        "masks/f.png: mask values 4, 9 outside 0..3 (background and classes) and 255 (ignore) (listed at tags.csv:8)",
        "tags.csv:9: duplicate image id 'a' (first listed at line 2)",
        "tags.csv:10: 3 fields where the header has 2",
        "tags.csv:11: image '../h.jpg' is not a file name",
        "tags.csv:12: image file images/I.JPG not found (there is images/i.jpg; names are case-sensitive)",
        "images/notimage.jpg: not a JPEG, PNG, BMP or WEBP file",
        "images/huge.png: image has too many pixels",
    ]
    assert len(found) == len(expected_prefixes), "\n".join(found)
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in found), (prefix, found)
    assert "(listed at tags.csv:6)" in next(line for line in found if line.startswith("images/corrupt.jpg"))
    assert str(excinfo.value).startswith(f"dataset has {len(expected_prefixes)} problem(s):")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("filename,labels", "tags.csv:1: bad header 'filename,labels'; expected 'image,tags' or 'image,tags,split'"),
        ("image,tags,extra", "tags.csv:1: bad header 'image,tags,extra'"),
    ],
)
def test_bad_header(tmp_path, header, expected):
    root = write_manifest(tmp_path / "ds", ["cat"], ["a.jpg,cat"], images={"a.jpg": (8, 8)}, header=header)
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert len(problems_of(excinfo)) == 1 and problems_of(excinfo)[0].startswith(expected)


def test_split_column_may_come_before_tags(tmp_path):
    root = write_manifest(
        tmp_path / "ds", ["cat"], ["a.jpg,val,cat"], images={"a.jpg": (8, 8)}, header="image,split,tags"
    )
    assert [(im.tags, im.split) for im in read_dataset(root).images] == [((1,), "val")]


def test_missing_manifest_parts(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "tags.csv").write_text("image,tags\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(tmp_path / "ds")
    assert [p.split(";")[0] for p in problems_of(excinfo)] == ["classes.txt: file missing", "images/: folder missing"]


def test_bad_classes_file(tmp_path):
    root = write_manifest(tmp_path / "ds", ["background", "cat", "", "a|b"], ["a.jpg,cat"], images={"a.jpg": (8, 8)})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [
        "classes.txt:1: 'background' is label 0 and not listed; remove it",
        "classes.txt:3: empty line: line i names label i, so remove it",
        "classes.txt:4: class 'a|b' contains '|' or ',', which tags.csv uses",
    ]


# --- the image column: a file name inside images/, or a bare id -----------------------------------


def test_bare_id_accepted_when_one_image_has_that_stem(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    root = write_manifest(
        tmp_path / "ds",
        ["cat"],
        ["im0,cat", "im1.png,cat", "2007_000032,cat"],
        images={"im0.jpg": (8, 6), "im1.png": (8, 6), "2007_000032.jpg": (8, 6)},
        masks={"im0": mask},
    )
    dataset = read_dataset(root)
    assert [(im.id, im.image.name) for im in dataset.images] == [
        ("im0", "im0.jpg"),
        ("im1", "im1.png"),
        ("2007_000032", "2007_000032.jpg"),
    ]
    assert dataset.by_id("im0").mask == root / "masks" / "im0.png"


def test_bare_id_and_file_name_of_one_image_are_one_id(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat"], ["im0,cat", "im0.jpg,cat"], images={"im0.jpg": (8, 6)})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == ["tags.csv:3: duplicate image id 'im0' (first listed at line 2)"]


def test_ambiguous_bare_id_refused_with_the_candidates(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat"], ["im0,cat"], images={"im0.jpg": (8, 6), "im0.png": (8, 6)})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [
        "tags.csv:2: image 'im0' matches several files in images/ (im0.jpg, im0.png); write the full file name"
    ]


@pytest.mark.parametrize(
    ("cell", "hint"),
    [
        ("im9", "images/ holds a.jpg, b.jpg, c.jpg, d.jpg, e.jpg, ..."),
        ("im0.png", "images/ has im0.jpg"),
        ("IM0", "there is images/im0.jpg; names are case-sensitive"),
    ],
)
def test_missing_image_refused_with_a_hint(tmp_path, cell, hint):
    images = {name: (8, 6) for name in ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "im0.jpg"]}
    root = write_manifest(tmp_path / "ds", ["cat"], [f"{cell},cat"], images=images)
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [f"tags.csv:2: image file images/{cell} not found ({hint})"]


def test_missing_image_in_an_empty_images_folder(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat"], ["im0,cat"])
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == ["tags.csv:2: image file images/im0 not found (images/ is empty)"]


def test_a_split_that_is_not_a_plain_name_is_refused(tmp_path):
    root = write_manifest(
        tmp_path / "ds", ["cat"], ["a.jpg,cat,../../etc", "b.jpg,cat,val-2"], {"a.jpg": (8, 6), "b.jpg": (8, 6)},
        header="image,tags,split",
    )  # fmt: skip
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [
        "tags.csv:2: split '../../etc' is not a plain name; use letters, digits, '_', '.' and '-'"
    ]

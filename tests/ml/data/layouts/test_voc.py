from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.data import DatasetError
from ml.data.layouts.voc import VOC_CLASSES, VOC_LABEL_NAMES
from ml.data.palette import IGNORE, VOC_PALETTE
from ml.data.readers import read_dataset
from tests.ml.data.builders import problems_of, voc_xml, write_image, write_voc


def voc_label(name):
    return VOC_CLASSES.index(name) + 1


def test_voc_read_tags_from_xml_and_masks(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 1:3] = voc_label("cat")
    mask[4:, 4:] = voc_label("tv monitor")
    mask[0, 0] = 255
    root = write_voc(
        tmp_path / "voc",
        images={"2007_000001": (8, 6), "2007_000002": (8, 6), "2007_000003": (8, 6)},
        annotations={"2007_000001": voc_xml("person", ("diningtable", True)), "2007_000003": voc_xml("dog")},
        masks={"2007_000002": mask, "2007_000003": np.zeros((6, 8), np.uint8)},
    )
    dataset = read_dataset(root)
    assert dataset.layout == "voc" and dataset.classes == list(VOC_CLASSES)
    assert dataset.label_names == list(VOC_LABEL_NAMES)  # "diningtable" from the XML, VOC's "tvmonitor" unwritten
    assert "diningtable" in VOC_LABEL_NAMES and "tvmonitor" in VOC_LABEL_NAMES and "pottedplant" in VOC_LABEL_NAMES
    tags = {im.id: im.tags for im in dataset.images}
    assert tags == {
        "2007_000001": tuple(sorted((voc_label("person"), voc_label("dining table")))),  # difficult counts
        "2007_000002": (voc_label("cat"), voc_label("tv monitor")),  # from the mask: 0 and 255 are no tags
        "2007_000003": (voc_label("dog"),),  # the XML wins over the mask
    }
    assert {im.split for im in dataset.images} == {"train"}
    assert dataset.by_id("2007_000002").mask == root / "SegmentationClass" / "2007_000002.png"


def test_voc_split_lists_smallest_wins_and_split_filter(tmp_path):
    ids = ["a", "b", "c"]
    root = write_voc(
        tmp_path / "voc",
        images={i: (8, 6) for i in [*ids, "unlisted"]},
        annotations={i: voc_xml("cat") for i in [*ids, "unlisted"]},
        lists={"train": ["a", "b"], "val": ["c"], "trainval": ["a", "b", "c"]},
    )
    assert [(im.id, im.split) for im in read_dataset(root).images] == [("a", "train"), ("b", "train"), ("c", "val")]
    assert [(im.id, im.split) for im in read_dataset(root, split="trainval").images] == [
        ("a", "trainval"),
        ("b", "trainval"),
        ("c", "trainval"),
    ]
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root, split="test")
    assert problems_of(excinfo) == ["ImageSets/Segmentation: no list test.txt; lists present: train, trainval, val"]


def test_every_voc_problem_reported_with_file_and_line(tmp_path):
    root = write_voc(
        tmp_path / "voc",
        images={"a": (8, 6), "b": (8, 6), "c": (8, 6), "d": (8, 6), "e": (8, 6)},
        annotations={
            "a": voc_xml("cat", "unicorn"),
            "b": "<annotation>\n<object><name>cat</name>\n</annotation>\n",
            "c": '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY lol "lol">]>\n<annotation>&lol;</annotation>\n',
        },
        masks={"e": np.full((6, 8), 21, np.uint8)},
        lists={"train": ["a", "b", "c", "d", "missing", "e", "a"]},
    )
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    found = problems_of(excinfo)
    unicorn_line = voc_xml("cat", "unicorn").splitlines().index("    <name>unicorn</name>") + 1
    expected_prefixes = [
        "ImageSets/Segmentation/train.txt:7: id 'a' listed twice (first at line 1)",
        f"Annotations/a.xml:{unicorn_line}: unknown object name 'unicorn'; valid classes: aeroplane, bicycle",
        "Annotations/b.xml:3: not well-formed XML",
        "Annotations/c.xml: XML uses a DTD, entity or external reference",
        "ImageSets/Segmentation/train.txt:4: image without tags: neither Annotations/d.xml nor SegmentationClass/d.png",
        "ImageSets/Segmentation/train.txt:5: image file JPEGImages/missing.jpg not found",
        "SegmentationClass/e.png: mask values 21 outside 0..20",
    ]
    assert len(found) == len(expected_prefixes), "\n".join(found)
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in found), (prefix, found)


def test_voc_without_lists_or_tags(tmp_path):
    root = write_voc(tmp_path / "voc", images={"a": (8, 6)})
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [
        "JPEGImages/a.jpg: image without tags: neither Annotations/a.xml nor SegmentationClass/a.png"
    ]


def test_voc_mask_with_only_background_has_no_tags(tmp_path):
    root = write_voc(tmp_path / "voc", images={"a": (8, 6)}, masks={"a": np.zeros((6, 8), np.uint8)})
    with pytest.raises(DatasetError, match="SegmentationClass/a.png: image without tags: its mask holds only"):
        read_dataset(root)


def test_voc_ambiguous_id(tmp_path):
    root = write_voc(tmp_path / "voc", images={"a": (8, 6)}, annotations={"a": voc_xml("cat")})
    write_image(root / "JPEGImages" / "a.png", fmt="PNG")
    with pytest.raises(DatasetError, match="id 'a' matches several files"):
        read_dataset(root)


def test_cvat_export_with_labelmap_and_rgb_masks(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"  # zipped the devkit folder: two wrapping folders
    mask = np.zeros((6, 8), np.uint8)
    mask[:3] = 1
    mask[3:, :4] = 2
    mask[0] = 3  # painted in the labelmap's colour of the ignore label
    colours = np.array([(0, 0, 0), (250, 50, 83), (36, 179, 83), (224, 224, 192)], np.uint8)
    write_image(root / "JPEGImages" / "frame_0.jpg", size=(8, 6))
    (root / "SegmentationClass").mkdir()
    Image.fromarray(colours[mask]).save(root / "SegmentationClass" / "frame_0.png")
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nkayak:250,50,83::\ndiningtable:36,179,83::\n"
        "ignored:224,224,192::\n"
    )
    dataset = read_dataset(tmp_path / "VOCdevkit")
    assert dataset.classes == ["kayak", "dining table"]
    assert dataset.label_names == ["kayak", "diningtable"]  # as the labelmap spells them
    assert [im.tags for im in dataset.images] == [(1, 2)]


def test_label_names_follow_the_xml_spelling(tmp_path):
    root = write_voc(
        tmp_path / "voc",
        images={"a": (8, 6), "b": (8, 6)},
        annotations={"a": voc_xml("Dining Table", "tvmonitor"), "b": voc_xml("diningtable")},
    )
    dataset = read_dataset(root)
    assert dataset.classes[voc_label("dining table") - 1] == "dining table"
    assert dataset.label_names[voc_label("dining table") - 1] == "Dining Table"  # the first file's spelling
    assert dataset.label_names[voc_label("tv monitor") - 1] == "tvmonitor"
    assert dataset.label_names[voc_label("potted plant") - 1] == "pottedplant"  # named nowhere: VOC's own


def test_an_ignore_entry_of_the_labelmap_is_label_255_not_a_class(tmp_path):
    root = write_voc(tmp_path / "voc", images={"a": (8, 6)})
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 2:4] = 1
    mask[0] = IGNORE
    colours = {0: (0, 0, 0), 1: (250, 50, 83), IGNORE: (10, 20, 30)}
    rgb = np.zeros((6, 8, 3), np.uint8)
    for label, colour in colours.items():
        rgb[mask == label] = colour
    (root / "SegmentationClass").mkdir()
    Image.fromarray(rgb).save(root / "SegmentationClass" / "a.png")
    (root / "labelmap.txt").write_text("background:0,0,0::\nkayak:250,50,83::\nvoid:10,20,30::\n")
    dataset = read_dataset(root)
    assert dataset.classes == dataset.label_names == ["kayak"]
    assert dataset.images[0].tags == (1,)


def test_labelmap_problems(tmp_path):
    root = write_voc(tmp_path / "voc", images={"a": (8, 6)}, annotations={"a": voc_xml("cat")})
    (root / "labelmap.txt").write_text("background:0,0,0::\ncat:1,2::\ncat:1,2,3::\nCat:4,5,6::\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo)[:2] == [
        "labelmap.txt:2: expected 'name:r,g,b::' with r, g, b in 0..255, got 'cat:1,2::'",
        "labelmap.txt:4: label 'Cat' listed twice (first at line 3)",
    ]


def test_voc_rgb_mask_in_voc_colours(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 2:4] = voc_label("sheep")
    root = write_voc(tmp_path / "voc", images={"a": (8, 6)})
    (root / "SegmentationClass").mkdir()
    Image.fromarray(VOC_PALETTE[mask]).save(root / "SegmentationClass" / "a.png")
    assert read_dataset(root).images[0].tags == (voc_label("sheep"),)

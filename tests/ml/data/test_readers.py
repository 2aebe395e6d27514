import zipfile

import numpy as np
import pytest
from PIL import Image

from ml.data import DatasetError, load_dataset
from ml.data.palette import VOC_PALETTE
from ml.data.readers import read_dataset, resolve_dataset_path
from ml.data.voc import VOC_CLASSES
from tests.conftest import TINY_CLASSES, TINY_TAGS
from tests.ml.data.builders import png_header_only, voc_xml, write_image, write_manifest, write_voc

CLASSES = ["cat", "dog", "dining table"]


def problems_of(excinfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


def good_manifest(root, **kwargs):
    return write_manifest(
        root,
        CLASSES,
        ["a.jpg,cat", "b.png,Dog | dining  table", "c.jpg,cat|cat"],
        images={"a.jpg": (20, 10), "b.png": (12, 12), "c.jpg": (8, 6)},
        **kwargs,
    )


# --- manifest layout -------------------------------------------------------------------------------


def test_manifest_read(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:9] = 1
    mask[0] = 255
    root = good_manifest(tmp_path / "ds", masks={"a": mask})
    dataset = read_dataset(root)
    assert dataset.layout == "manifest" and dataset.root == root
    assert dataset.classes == CLASSES and dataset.num_classes == 3
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


def test_manifest_synonyms(tmp_path):
    root = good_manifest(tmp_path / "ds")
    (root / "synonyms.csv").write_text("class,syn1,syn2\nCAT,kitty,feline,kitty\ndining table,dinner table,\n")
    assert read_dataset(root).synonyms == {"cat": ["kitty", "feline"], "dining table": ["dinner table"]}


def test_tiny_dataset_fixture_reads(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    assert dataset.classes == list(TINY_CLASSES)
    assert [im.tags for im in dataset.images] == [tuple(sorted(t)) for t in TINY_TAGS]
    assert all(im.mask is not None for im in dataset.images)


def test_wrapping_folders_are_looked_into(tmp_path):
    good_manifest(tmp_path / "outer" / "inner")
    dataset = read_dataset(tmp_path / "outer")
    assert dataset.root == tmp_path / "outer" / "inner" and len(dataset.images) == 3


# --- every problem, with file and line -------------------------------------------------------------


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


def test_empty_dataset(tmp_path):
    root = write_manifest(tmp_path / "ds", ["cat"], [])
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo) == [".: the dataset lists no images"]


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


def test_not_utf8_reported_with_line(tmp_path):
    root = good_manifest(tmp_path / "ds")
    (root / "classes.txt").write_bytes(b"cat\ndog\ndining \xff table\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo)[0].startswith("classes.txt:3: not UTF-8 text")


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


# --- VOC layout ------------------------------------------------------------------------------------


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
    colours = np.array([(0, 0, 0), (250, 50, 83), (36, 179, 83)], np.uint8)
    write_image(root / "JPEGImages" / "frame_0.jpg", size=(8, 6))
    (root / "SegmentationClass").mkdir()
    Image.fromarray(colours[mask]).save(root / "SegmentationClass" / "frame_0.png")
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nkayak:250,50,83::\ndiningtable:36,179,83::\n"
    )
    dataset = read_dataset(tmp_path / "VOCdevkit")
    assert dataset.classes == ["kayak", "dining table"]
    assert [im.tags for im in dataset.images] == [(1, 2)]


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

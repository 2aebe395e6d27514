import csv
import json
import zipfile

import datumaro
import numpy as np
import pytest
from PIL import Image

from ml.data import Dataset, ImageRecord
from ml.data.images import read_mask
from ml.data.layouts.voc import VOC_LABEL_NAMES
from ml.data.palette import IGNORE, IGNORE_NAME, labelmap_txt, save_mask_png
from ml.data.readers import read_dataset
from ml.runtime import StageContext, write_json
from ml.spec.config import config_to_dict, resolve_config
from ml.spec.layout import RunLayout
from ml.spec.registry import EXPORT_FORMATS
from ml.stages import export
from tests.ml.data.builders import voc_xml, write_voc

CLASSES = ["cat", "dog"]
IDS = ("a1", "b2", "c3")


def _run(tmp_path, config=None, selections=True, mask_stage="refine") -> StageContext:
    run = tmp_path / "run"
    (run / mask_stage).mkdir(parents=True)
    records = []
    for index, image_id in enumerate(IDS):
        mask = np.zeros((6, 8), np.uint8)
        mask[2:4, 2 + index : 5 + index] = index % 2 + 1
        save_mask_png(mask, run / mask_stage / f"{image_id}.png")
        records.append(ImageRecord(image_id, tmp_path / f"{image_id}.jpg", (index % 2 + 1,)))
    records.append(ImageRecord("broken", tmp_path / "broken.jpg", (1,)))
    (run / "eval_masks").mkdir()
    write_json(run / "eval_masks" / "metrics.json", {"has_ground_truth": True, "miou": 0.5})
    (run / "eval_cams").mkdir()
    write_json(run / "eval_cams" / "metrics.json", {"has_ground_truth": True, "miou": 0.25})
    if selections:
        (run / "select_prompts").mkdir()
        lines = [
            {
                "image": i,
                "label": 1,
                "class": "cat",
                "candidates": ["cat", "kitty"],
                "scores": [0.31, 0.2875],
                "chosen": "cat",
            }
            for i in ("a1", "broken")
        ]
        (run / "select_prompts" / "selections.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    dataset = Dataset(tmp_path, "manifest", CLASSES, records)
    ctx = StageContext(dataset, run, config or resolve_config("cpu-small"), stage="export")
    ctx.fail_image("broken", "make_cams: cannot read broken.jpg: damaged")
    return ctx


def test_export_writes_the_cvat_segmentation_mask_layout(tmp_path):
    ctx = _run(tmp_path)
    export.run(ctx)
    masks = RunLayout(ctx.out).export_dir("cvat")
    assert sorted(p.name for p in (masks / "SegmentationClass").iterdir()) == [f"{i}.png" for i in IDS]
    for image_id in IDS:
        exported = masks / "SegmentationClass" / f"{image_id}.png"
        assert Image.open(exported).mode == "P"
        np.testing.assert_array_equal(read_mask(exported), read_mask(ctx.out / "refine" / f"{image_id}.png"))
    assert (masks / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == list(IDS)
    labelmap = (masks / "labelmap.txt").read_text()
    assert labelmap == labelmap_txt(CLASSES)
    entries = [line.split(":")[0] for line in labelmap.splitlines() if not line.startswith("#")]
    assert entries == ["background", *CLASSES, IGNORE_NAME]
    with open(masks / "selections.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [list(export.SELECTION_COLUMNS), ["a1", "cat", "cat", "cat|kitty", "0.3100|0.2875", "false"]]
    with open(masks / "failed_images.csv", newline="") as f:
        assert list(csv.reader(f))[1:] == [["broken", "make_cams: cannot read broken.jpg: damaged"]]
    metrics = json.loads((masks / "metrics.json").read_text())
    assert metrics["miou"] == 0.5 and metrics["cams"]["miou"] == 0.25
    assert json.loads((masks / "config.json").read_text()) == config_to_dict(ctx.config)
    with zipfile.ZipFile(RunLayout(ctx.out).archive("cvat")) as zf:
        names = set(zf.namelist())
        on_disk = {p.relative_to(masks).as_posix() for p in masks.rglob("*") if p.is_file()}
        assert names == on_disk and "labelmap.txt" in names and "SegmentationClass/a1.png" in names
        assert zf.read("SegmentationClass/b2.png") == (masks / "SegmentationClass" / "b2.png").read_bytes()


def test_without_a_selection_stage_the_csv_is_header_only(tmp_path):
    ctx = _run(tmp_path, selections=False)
    export.run(ctx)
    text = (RunLayout(ctx.out).export_dir("cvat") / "selections.csv").read_text()
    assert text.splitlines() == [",".join(export.SELECTION_COLUMNS)]


def test_masks_come_from_crf_when_it_is_enabled(tmp_path):
    ctx = _run(tmp_path, config=resolve_config("cpu-small", {"crf": {"enabled": True}}), mask_stage="crf")
    export.run(ctx)
    assert json.loads((ctx.out / "export" / "stage.json").read_text())["masks_from"] == "crf"
    assert len(list((RunLayout(ctx.out).export_dir("cvat") / "SegmentationClass").iterdir())) == len(IDS)


def test_a_missing_mask_stops_the_export_and_leaves_no_output(tmp_path):
    ctx = _run(tmp_path)
    (ctx.out / "refine" / "b2.png").unlink()
    with pytest.raises(FileNotFoundError, match="b2.png is missing"):
        export.run(ctx)
    assert not (ctx.out / "export").exists()


# Objects named as VOC's own files spell them, which is how a CVAT task made from VOC's labels names them too.
VOC_OBJECTS = {"d1": "diningtable", "p2": "pottedplant", "t3": "tvmonitor"}


def _voc_run(tmp_path, formats=("cvat",)) -> tuple[StageContext, dict[str, np.ndarray]]:
    """A VOC dataset as read from its files, and a run whose final masks are its ground truth, 255 borders kept."""
    masks = {}
    for image_id, name in VOC_OBJECTS.items():
        mask = np.zeros((6, 8), np.uint8)
        mask[2:5, 2:6] = VOC_LABEL_NAMES.index(name) + 1
        mask[1, 1:7] = IGNORE  # VOC's void border around an object
        masks[image_id] = mask
    root = write_voc(
        tmp_path / "voc",
        images={image_id: (8, 6) for image_id in VOC_OBJECTS},
        annotations={image_id: voc_xml(name) for image_id, name in VOC_OBJECTS.items()},
        masks=masks,
    )
    run = tmp_path / "run"
    (run / "refine").mkdir(parents=True)
    for image_id, mask in masks.items():
        save_mask_png(mask, run / "refine" / f"{image_id}.png")
    config = resolve_config("cpu-small", {"export": {"formats": list(formats)}})
    return StageContext(read_dataset(root), run, config, stage="export"), masks


def test_a_voc_export_keeps_the_datasets_label_names_and_imports_with_datumaro(tmp_path):
    ctx, masks = _voc_run(tmp_path)
    assert ctx.dataset.classes[VOC_LABEL_NAMES.index("diningtable")] == "dining table"  # the prompts' word
    export.run(ctx)
    folder = RunLayout(ctx.out).export_dir("cvat")
    imported = datumaro.Dataset.import_from(str(folder), "voc_segmentation")
    labels = imported.categories()[datumaro.AnnotationType.label]
    assert [label.name for label in labels] == ["background", *VOC_LABEL_NAMES, IGNORE_NAME]
    value_of = {"background": 0, IGNORE_NAME: IGNORE} | {n: i for i, n in enumerate(VOC_LABEL_NAMES, start=1)}
    assert sorted(item.id for item in imported) == sorted(masks)
    for item in imported:
        decoded = np.full(masks[item.id].shape, -1)
        for annotation in item.annotations:
            decoded[annotation.image] = value_of[labels[annotation.label].name]
        np.testing.assert_array_equal(decoded, masks[item.id])


def test_every_format_names_the_labels_as_the_dataset_does(tmp_path):
    ctx, _ = _voc_run(tmp_path, formats=EXPORT_FORMATS)
    export.run(ctx)
    layout = RunLayout(ctx.out)
    assert all(layout.archive(name).is_file() for name in EXPORT_FORMATS)
    coco = json.loads((layout.export_dir("coco") / "annotations" / "instances_train.json").read_text())
    assert [category["name"] for category in coco["categories"]] == list(VOC_LABEL_NAMES)
    classes = (layout.export_dir("index_png") / "classes.txt").read_text().splitlines()
    assert classes == ["background", *VOC_LABEL_NAMES]


def test_a_format_the_run_did_not_export_is_built_later_once(tmp_path):
    ctx = _run(tmp_path)
    export.run(ctx)
    layout = RunLayout(ctx.out)
    built = export.add_format(ctx, "coco")
    assert built == layout.archive("coco")
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
    assert {"annotations/instances_train.json", "selections.csv", "metrics.json", "config.json"} <= names
    made = built.stat().st_mtime_ns
    assert export.add_format(ctx, "coco") == built and built.stat().st_mtime_ns == made  # kept, not rebuilt
    assert sorted(p.name for p in (ctx.out / "export").iterdir()) == [
        "coco", "coco.zip", "cvat", "cvat.zip", "stage.json"
    ]  # fmt: skip

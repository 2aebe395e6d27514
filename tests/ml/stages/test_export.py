import csv
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from ml.data import Dataset, ImageRecord
from ml.data.images import read_mask
from ml.data.palette import labelmap_txt, save_mask_png
from ml.runtime import StageContext, write_json
from ml.spec.config import config_to_dict, resolve_config
from ml.spec.layout import RunLayout
from ml.stages import export

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
    assert entries == ["background", *CLASSES]
    with open(masks / "selections.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [list(export.SELECTION_COLUMNS), ["a1", "cat", "cat", "cat|kitty", "0.3100|0.2875"]]
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

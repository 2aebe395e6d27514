import numpy as np
from pycocotools.coco import COCO

from ml.data.palette import IGNORE
from ml.exports.coco import write_coco
from tests.ml.exports.builders import IMAGES, LABEL_NAMES, final_masks


def test_coco_loads_with_pycocotools_and_decodes_to_the_final_masks(tmp_path):
    run = final_masks(tmp_path)
    folder = tmp_path / "coco"
    folder.mkdir()
    write_coco(folder, run.masks)
    assert sorted(p.name for p in (folder / "annotations").iterdir()) == ["instances_train.json", "instances_val.json"]
    seen = []
    for split in ("train", "val"):
        coco = COCO(str(folder / "annotations" / f"instances_{split}.json"))
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == list(enumerate(LABEL_NAMES, 1))
        for image in coco.loadImgs(coco.getImgIds()):
            image_id = image["file_name"].removesuffix(".jpg")
            seen.append(image_id)
            expected = run.labels[image_id]
            assert (IMAGES[image_id][0], image["height"], image["width"]) == (split, *expected.shape)
            decoded = np.zeros_like(expected)
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                region = coco.annToMask(annotation).astype(bool)
                assert not decoded[region].any(), "one annotation per class: regions never overlap"
                decoded[region] = annotation["category_id"]
                rows, columns = np.nonzero(region)
                assert annotation["area"] == region.sum() and annotation["iscrowd"] == 0
                x, y = columns.min(), rows.min()
                assert annotation["bbox"] == [x, y, columns.max() - x + 1, rows.max() - y + 1]
            scored = expected != IGNORE
            np.testing.assert_array_equal(decoded[scored], expected[scored])
            assert not decoded[~scored].any(), "ignored pixels belong to no category"
    assert sorted(seen) == sorted(IMAGES)

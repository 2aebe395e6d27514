import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.segmentation import lraspp_mobilenet_v3_large
from torchvision.transforms.functional import pil_to_tensor

from ml.data.palette import IGNORE
from ml.exports.index_png import write_index_png
from tests.ml.exports.builders import LABEL_NAMES, final_masks


def test_a_segmentation_model_trains_on_the_index_png_layout_as_it_is(tmp_path):
    run = final_masks(tmp_path)
    folder = tmp_path / "index_png"
    folder.mkdir()
    write_index_png(folder, run.masks)
    classes = (folder / "classes.txt").read_text().splitlines()
    assert classes == ["background", *LABEL_NAMES]
    assert (folder / "splits" / "val.txt").read_text().split() == ["c3"]
    ids = (folder / "splits" / "train.txt").read_text().split()
    assert ids == ["a1", "b2"]

    # What a training script does: the PNG's pixels are the targets, 255 is the loss's ignore_index.
    targets = []
    for image_id in ids:
        with Image.open(folder / "masks" / f"{image_id}.png") as mask:
            assert mask.mode == "L"
            targets.append(torch.from_numpy(np.array(mask)).long())
    targets = torch.stack(targets)
    np.testing.assert_array_equal(targets.numpy(), np.stack([run.labels[i] for i in ids]))
    assert (targets == IGNORE).any()
    inputs = torch.stack([pil_to_tensor(Image.open(run.images / f"{i}.jpg")).float() / 255 for i in ids])
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = F.cross_entropy(model(inputs)["out"], targets, ignore_index=IGNORE)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)

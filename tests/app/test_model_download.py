"""A job's segmenter downloaded over REST and used without pole, on a job finished as a worker would
(tests/app/finished_job.py) with an untrained segmenter: the checkpoint labels an image in a fresh,
isolated Python process following the README's lines, as pole does; the ONNX export is built once by
a worker on the first request for it (the worker's part run here on the queued message's arguments,
as tests/app/test_archive_formats.py does) and reproduces PyTorch in onnxruntime."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image, ImageDraw

from app.db import create_db_engine, make_sessionmaker
from app.queue import BUILD_ONNX_MODEL
from app.storage import run_layout
from ml.data.images import read_image
from ml.models.segmenter import load_segmenter, normalise, predict_masks
from ml.models.segmenter_onnx import LOGIT_TOLERANCE, MIN_LABEL_AGREEMENT
from ml.spec.layout import CHECKPOINT
from tests.app.finished_job import add_segmenter, finish_job
from tests.app.service import take_queued_tasks, upload
from worker.archives import build_onnx_model

README = Path(__file__).resolve().parents[2] / "README.md"
POLE_MODULES = {"ml", "pole", "app", "worker", "tests"}
# Appended to a README block: what it computed, and every module the process loaded.
REPORT = """
import json, sys
np.save("labels.npy", labels)
with open("modules.json", "w") as report:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), report)
"""


def readme_blocks() -> tuple[str, str]:
    """The README's two Python blocks under "Use the model elsewhere": torch + torchvision, then onnxruntime."""
    section = README.read_text().split("### Use the model elsewhere\n", 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    torch_block, onnx_block = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return torch_block, onnx_block


def run_readme_block(code: str, folder: Path) -> tuple[np.ndarray, set[str]]:
    """Run `code` as a script of its own in `folder`, in a fresh interpreter that sees no environment
    variables, user site or working directory (-I); returns its labels and the modules it loaded."""
    (folder / "use_model.py").write_text(code + REPORT)
    done = subprocess.run(
        [sys.executable, "-I", "use_model.py"], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return np.load(folder / "labels.npy"), set(json.loads((folder / "modules.json").read_text()))


def draw_photo(path: Path) -> None:
    """A picture with something in it: grey noise, a red disc and a blue square."""
    pixels = np.random.default_rng(0).integers(90, 150, size=(90, 120, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(photo)
    draw.ellipse((10, 15, 50, 55), fill=(200, 30, 30))
    draw.rectangle((70, 40, 110, 80), fill=(30, 30, 200))
    photo.save(path, quality=90)


def pole_labels(checkpoint_path: Path, photo: Path) -> np.ndarray:
    """The photo's labels as pole itself computes them."""
    model, checkpoint = load_segmenter(checkpoint_path)
    return predict_masks(model, checkpoint, [read_image(photo)])[0]


@pytest.fixture
def finished_job(alice, settings, dataset_zip) -> tuple[str, dict]:
    dataset = upload(alice, dataset_zip).json()
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "cpu-small"}).json()["id"]
    finish_job(settings, job_id, failed_image="img05")
    take_queued_tasks(settings)  # the job's run, which no worker takes here
    return job_id, dataset


@pytest.fixture
def segmenter_job(settings, finished_job) -> tuple[str, dict]:
    add_segmenter(settings, finished_job[0])
    return finished_job


def test_the_checkpoint_labels_an_image_elsewhere_with_the_readme_lines(alice, segmenter_job, tmp_path):
    job_id, _ = segmenter_job
    served = alice.get(f"/v1/jobs/{job_id}/model")
    assert served.status_code == 200 and served.headers["content-type"] == "application/octet-stream"
    assert f'filename="pole_segmenter_{job_id}.pt"' in served.headers["content-disposition"]
    recorded = alice.get(f"/v1/jobs/{job_id}").json()["checkpoints"]["train_seg"][CHECKPOINT]
    assert served.headers["etag"] == f'"{recorded}"' == f'"{hashlib.sha256(served.content).hexdigest()}"'

    (tmp_path / "segmenter.pt").write_bytes(served.content)
    draw_photo(tmp_path / "photo.jpg")
    labels, modules = run_readme_block(readme_blocks()[0], tmp_path)
    assert not modules & POLE_MODULES and {"torch", "torchvision"} <= modules

    expected = pole_labels(tmp_path / "segmenter.pt", tmp_path / "photo.jpg")
    assert len(np.unique(expected)) > 1  # an image labelled all alike would prove little
    np.testing.assert_array_equal(labels, expected)
    assert (tmp_path / "photo_labels.png").is_file()


def test_the_onnx_export_is_built_once_on_demand_and_reproduces_pytorch(alice, settings, segmenter_job, tmp_path):
    job_id, dataset = segmenter_job
    url = f"/v1/jobs/{job_id}/model"
    for _ in range(2):
        pending = alice.get(url, params={"format": "onnx"})
        assert pending.status_code == 202 and int(pending.headers["retry-after"]) > 0
        assert pending.json()["detail"].startswith("the ONNX export of this job's segmenter is being built")
    queued = take_queued_tasks(settings)
    assert queued == [(BUILD_ONNX_MODEL, {"job_id": job_id})]  # one, however often asked

    engine = create_db_engine(settings.database_url)
    build_onnx_model(make_sessionmaker(engine), settings, **queued[0][1])
    engine.dispose()
    served = alice.get(url, params={"format": "onnx"})
    assert served.status_code == 200 and served.headers["content-type"] == "application/octet-stream"
    assert f'filename="pole_segmenter_{job_id}.onnx"' in served.headers["content-disposition"]
    again = alice.get(url, params={"format": "onnx"})
    assert again.status_code == 200 and again.content == served.content
    assert take_queued_tasks(settings) == []  # kept: asked again, built once

    checkpoint_bytes = alice.get(url).content
    (tmp_path / "segmenter.pt").write_bytes(checkpoint_bytes)
    (tmp_path / "segmenter.onnx").write_bytes(served.content)
    model, checkpoint = load_segmenter(tmp_path / "segmenter.pt")
    session = onnxruntime.InferenceSession(tmp_path / "segmenter.onnx", providers=["CPUExecutionProvider"])
    facts = session.get_modelmeta().custom_metadata_map
    assert json.loads(facts["classes"]) == dataset["classes"] and json.loads(facts["input"]) == checkpoint["input"]
    assert json.loads(facts["palette"]) == checkpoint["palette"]
    assert facts["checkpoint_sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert [tuple(i.shape) for i in session.get_inputs()] == [("batch", 3, "height", "width")]

    # Batches and sizes other than those the export was traced at and checked on.
    generator = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 75, 101), (3, 3, 130, 90)]:
        image = normalise(torch.rand(shape, generator=generator), checkpoint)
        with torch.inference_mode():
            reference = model(image)["out"].numpy()
        exported = session.run(["logits"], {"image": image.numpy()})[0]
        assert exported.shape == reference.shape == (shape[0], len(dataset["classes"]) + 1, *shape[2:])
        assert np.abs(exported - reference).max() <= LOGIT_TOLERANCE * max(1.0, np.abs(reference).max())
        assert (exported.argmax(1) == reference.argmax(1)).mean() >= MIN_LABEL_AGREEMENT

    draw_photo(tmp_path / "photo.jpg")
    labels, modules = run_readme_block(readme_blocks()[1], tmp_path)
    assert not modules & (POLE_MODULES | {"torch"}) and "onnxruntime" in modules
    assert (labels == pole_labels(tmp_path / "segmenter.pt", tmp_path / "photo.jpg")).mean() >= MIN_LABEL_AGREEMENT


def test_an_export_that_fails_is_answered_with_its_reason(alice, settings, segmenter_job):
    job_id, _ = segmenter_job
    layout = run_layout(settings, job_id)
    layout.segmenter.write_bytes(b"not a checkpoint")
    assert alice.get(f"/v1/jobs/{job_id}/model", params={"format": "onnx"}).status_code == 202
    engine = create_db_engine(settings.database_url)
    build_onnx_model(make_sessionmaker(engine), settings, job_id)
    engine.dispose()
    failed = alice.get(f"/v1/jobs/{job_id}/model", params={"format": "onnx"})
    assert failed.status_code == 410
    assert failed.json()["detail"].startswith("building the ONNX export of this job's segmenter failed: ")
    assert not layout.segmenter_onnx.exists() and not layout.segmenter_onnx_request.exists()


def test_a_job_without_a_segmenter_says_how_to_get_one(alice, settings, finished_job):
    job_id, dataset = finished_job
    for model_format in ("pytorch", "onnx"):
        refused = alice.get(f"/v1/jobs/{job_id}/model", params={"format": model_format})
        assert refused.status_code == 409
        assert refused.json()["detail"] == (
            "this job trained no segmenter: its run had no train_seg stage, which runs when "
            "train_seg.enabled is true; create a job with that config to get one"
        )
    queued = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "cpu-small"}).json()["id"]
    waiting = alice.get(f"/v1/jobs/{queued}/model")
    assert waiting.status_code == 409
    assert waiting.json()["detail"] == (
        f"job is queued; its segmenter exists once it has succeeded (GET /v1/jobs/{queued})"
    )
    assert [task for task, _ in take_queued_tasks(settings)] == ["pole.run_job"]  # no build


def test_another_keys_job_has_no_model_and_a_format_must_be_one_pole_writes(alice, bob, segmenter_job):
    job_id, _ = segmenter_job
    for model_format in ("pytorch", "onnx"):
        hidden = bob.get(f"/v1/jobs/{job_id}/model", params={"format": model_format})
        assert hidden.status_code == 404 and job_id in hidden.json()["detail"]
    assert alice.get(f"/v1/jobs/{job_id}/model", params={"format": "tflite"}).status_code == 422

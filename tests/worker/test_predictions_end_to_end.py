"""A prediction run over real HTTP against a real worker process, through the Python client: a real job
trains a segmenter (train_seg), a zip of new images (one of them corrupt) is labelled by it, and its
results come back in every export format; the model downloads; no other key sees any of it."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from pole.client import Client, PoleApiError
from tests.app.conftest import new_key
from tests.app.finished_job import finish_job
from tests.app.service import (
    FAST_CONFIG,
    ApiServer,
    WorkerProcess,
    make_dataset_zip,
    make_settings,
    small_dataset,
    upload,
    wait_for,
)

SIZES = {"field": (40, 30), "harbour": (40, 30), "street": (25, 33)}  # two of one size share a batch
WITH_SEGMENTER = {
    **FAST_CONFIG,
    "models": {"seg_arch": "lraspp_mobilenet_v3_large", "seg_weights": "random"},
    "train_seg": {"enabled": True, "epochs": 1, "batch_size": 2, "augment": {"resize_long": [48, 64], "crop_size": 48}},
}


@pytest.fixture
def new_images(tmp_path):
    """A zip of three images and one truncated PNG, beside their sizes."""
    path = tmp_path / "new_images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, size in SIZES.items():
            buffer = io.BytesIO()
            Image.effect_noise(size, 50).convert("RGB").save(buffer, "PNG")
            archive.writestr(f"photos/{name}.png", buffer.getvalue())
        archive.writestr("photos/corrupt.png", buffer.getvalue()[:60])
    return path


def test_a_real_worker_labels_new_images_with_a_jobs_segmenter(tmp_path, new_images):
    settings = make_settings(tmp_path / "data")
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        dataset = upload(alice, make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")).json()
        bare_job_id = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "cpu-small"}).json()["id"]
        finish_job(settings, bare_job_id, failed_image="img05")  # a finished job without a segmenter
        body = {"dataset_id": dataset["id"], "preset": "cpu-small", "config": WITH_SEGMENTER}
        job_id = alice.post("/v1/jobs", json=body).json()["id"]
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            job = wait_for(alice, job_id, lambda j: j["state"] in ("succeeded", "failed"), 300, "the job")
            assert job["state"] == "succeeded", (job, worker.log())
            assert "eval_seg" in job["metrics"] and job["links"]["model"] == f"/v1/jobs/{job_id}/model"
            model = alice.get(job["links"]["model"])
            assert model.status_code == 200 and len(model.content) > 1_000_000
            with Client(api.url, alice.headers["Authorization"].removeprefix("Bearer ")) as pole:
                run = pole.create_prediction(job_id, new_images)
                assert run["state"] == "queued" and run["image_count"] == 4
                final = pole.wait_for_prediction(job_id, run["id"], poll_seconds=0.2)
                assert final["state"] == "succeeded", (final, worker.log())
                assert list(final["failed_images"]) == ["corrupt.png"]
                assert [r["id"] for r in pole.list_predictions(job_id, page_size=1)] == [run["id"]]

                cvat = pole.download_prediction_archive(job_id, run["id"], tmp_path / "cvat.zip")
                coco = pole.download_prediction_archive(job_id, run["id"], tmp_path / "coco.zip", export_format="coco")
                index_png = pole.download_prediction_archive(
                    job_id, run["id"], tmp_path / "index_png.zip", export_format="index_png"
                )
                with pytest.raises(PoleApiError) as refused:
                    pole.create_prediction(bare_job_id, new_images)
                assert refused.value.status == 409 and "train_seg" in refused.value.detail
        finally:
            worker.stop()

        classes = len(dataset["classes"])
        base = f"/v1/jobs/{job_id}/predictions/{run['id']}"
        for name, size in SIZES.items():
            mask = Image.open(io.BytesIO(alice.get(f"{base}/images/{name}/mask.png").content))
            assert mask.size == size and mask.mode == "P" and np.asarray(mask).max() <= classes
            overlay = Image.open(io.BytesIO(alice.get(f"{base}/images/{name}/overlay.png").content))
            assert overlay.width == size[0] and overlay.height > size[1]  # the legend under the image
        with zipfile.ZipFile(cvat) as archive:
            masks = sorted(n for n in archive.namelist() if n.startswith("SegmentationClass/"))
            assert masks == [f"SegmentationClass/{name}.png" for name in sorted(SIZES)]
            assert "corrupt.png" in archive.read("failed_images.csv").decode()
        with zipfile.ZipFile(coco) as archive:
            instances = json.loads(archive.read("annotations/instances_default.json"))
        assert sorted(image["file_name"] for image in instances["images"]) == [f"{n}.png" for n in sorted(SIZES)]
        assert [category["name"] for category in instances["categories"]] == dataset["classes"]
        with zipfile.ZipFile(index_png) as archive:
            assert sorted(n for n in archive.namelist() if n.startswith("masks/")) == [
                f"masks/{name}.png" for name in sorted(SIZES)
            ]

        with api.client(new_key(settings, "bob")) as bob:
            owned = (base, f"{base}/archive", f"{base}/images/field/mask.png", f"/v1/jobs/{job_id}/predictions")
            for path in (*owned, f"/v1/jobs/{job_id}/model", f"/v1/jobs/{job_id}/model?format=onnx"):
                assert bob.get(path).status_code == 404, path
            stranger = bob.post(f"/v1/jobs/{job_id}/predictions", files={"file": ("x.zip", new_images.read_bytes())})
            assert stranger.status_code == 404

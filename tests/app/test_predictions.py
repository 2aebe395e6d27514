"""Prediction runs over real HTTP, on a job finished as a worker would (tests/app/finished_job.py) with a
random-weights segmenter in its run directory: who may ask, what an upload may hold, and what deleting
the job's dataset does to them. The worker's part is done here, on the queued messages
(tests/worker/test_predictions_end_to_end.py runs a real worker)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest
from PIL import Image

from tests.app.finished_job import add_segmenter, finish_job, run_queued_tasks
from tests.app.service import data_dir_listing, upload


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def post_images(client, job_id: str, name: str, content: bytes):
    return client.post(f"/v1/jobs/{job_id}/predictions", files={"file": (name, content)})


@pytest.fixture
def finished_job(alice, settings, dataset_zip) -> tuple[str, str]:
    """(job id, dataset id) of a succeeded job without a segmenter."""
    dataset_id = upload(alice, dataset_zip).json()["id"]
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    finish_job(settings, job_id, failed_image="img05")
    return job_id, dataset_id


@pytest.fixture
def segmenter_job(settings, finished_job) -> tuple[str, str]:
    add_segmenter(settings, finished_job[0])
    return finished_job


def test_a_job_without_a_segmenter_says_how_to_get_one(alice, finished_job):
    job_id, dataset_id = finished_job
    refused = post_images(alice, job_id, "a.png", png((16, 16)))
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "trained no segmenter" in detail and '"train_seg": {"enabled": true}' in detail
    queued = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    not_yet = post_images(alice, queued, "a.png", png((16, 16)))
    assert not_yet.status_code == 409 and not_yet.json()["detail"].startswith("job is queued;")
    assert alice.get(f"/v1/jobs/{job_id}/predictions").json() == {"items": [], "next_cursor": None}


def test_an_upload_without_a_usable_image_is_refused_and_leaves_nothing(alice, settings, segmenter_job):
    job_id, _ = segmenter_job
    refusals = {  # (file name, content, status, a phrase the refusal must hold)
        "not a zip": ("x.zip", b"PK but not a zip" * 10, 400, "archive refused: not a zip"),
        "zip slip": ("x.zip", zip_of([("../../escaped.png", png((8, 8)))]), 400, "'..'"),
        "bomb": ("x.zip", zip_of([("zeros.png", b"\0" * (8 << 20))]), 400, "compression bomb"),
        "empty zip": ("x.zip", zip_of([]), 400, "empty"),
        "no image in the zip": ("x.zip", zip_of([("notes.txt", b"hello")]), 422, "notes.txt: not a JPEG"),
        "a lone file that is no image": ("notes.txt", b"hello", 422, "no image to label in the upload"),
    }
    before = data_dir_listing(settings)
    for case, (name, content, status, phrase) in refusals.items():
        refused = post_images(alice, job_id, name, content)
        assert refused.status_code == status and phrase in refused.json()["detail"], (case, refused.json())
        assert data_dir_listing(settings) == before, case
    assert alice.get(f"/v1/jobs/{job_id}/predictions").json()["items"] == []


def test_images_that_cannot_be_used_are_listed_and_the_others_labelled(alice, settings, segmenter_job):
    job_id, _ = segmenter_job
    members = [
        ("new/a.png", png((40, 30))),
        ("new/b.png", png((24, 20))),
        ("other/a.png", png((16, 16))),  # its id, the stem, is the first a.png's
        ("new/huge.png", huge_png_header()),
        ("new/notes.txt", b"not pixels"),
    ]
    created = post_images(alice, job_id, "new.zip", zip_of(members))
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["state"] == "queued" and run["image_count"] == 4 and run["classes"] == ["square", "circle", "triangle"]
    failed = run["failed_images"]
    assert set(failed) == {"other/a.png", "new/huge.png", "new/notes.txt"}, failed
    assert "is taken by new/a.png" in failed["other/a.png"]
    assert "megapixels" in failed["new/huge.png"] and "not a JPEG" in failed["new/notes.txt"]

    base = f"/v1/jobs/{job_id}/predictions/{run['id']}"
    assert alice.get(f"{base}/images/a/mask.png").status_code == 409  # not labelled yet
    assert run_queued_tasks(settings) == ["pole.run_job", "pole.run_prediction"]
    done = alice.get(base).json()
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["message"] == "labelled 2 of 4 image(s)"
    mask = Image.open(io.BytesIO(alice.get(f"{base}/images/a/mask.png").content))
    assert mask.size == (40, 30)
    refused = alice.get(f"{base}/images/huge/mask.png")
    assert refused.status_code == 404 and "could not be labelled: image has too many pixels" in refused.json()["detail"]
    assert alice.get(f"{base}/images/nope/overlay.png").status_code == 404
    with zipfile.ZipFile(io.BytesIO(alice.get(f"{base}/archive").content)) as archive:
        assert {"SegmentationClass/a.png", "SegmentationClass/b.png"} <= set(archive.namelist())
        assert archive.read("failed_images.csv").decode().count("\n") == 4  # the header and the three


def test_deleting_the_dataset_never_takes_a_model_in_use_and_says_what_goes(alice, settings, segmenter_job):
    job_id, dataset_id = segmenter_job
    run = post_images(alice, job_id, "photo.png", png((20, 12))).json()
    assert run["image_count"] == 1 and run["failed_images"] == {}

    unasked = alice.delete(f"/v1/datasets/{dataset_id}")
    assert unasked.status_code == 409
    assert unasked.json()["detail"] == (
        f"dataset is in use by prediction run(s) {run['id']} still labelling images with its jobs' segmenters; "
        "wait until they end, then add ?cascade=true to delete its 1 job(s) and their results, with the 1 "
        "prediction run(s) made with their segmenters, too"
    )
    busy = alice.delete(f"/v1/datasets/{dataset_id}", params={"cascade": "true"})
    assert busy.status_code == 409 and "still labelling images" in busy.json()["detail"]

    run_queued_tasks(settings)
    base = f"/v1/jobs/{job_id}/predictions/{run['id']}"
    assert alice.get(f"{base}/images/photo/overlay.png").headers["content-type"] == "image/png"
    done = alice.delete(f"/v1/datasets/{dataset_id}")
    assert (
        done.status_code == 409
        and "with the 1 prediction run(s) made with their segmenters, too" in (done.json()["detail"])
    )
    assert alice.delete(f"/v1/datasets/{dataset_id}", params={"cascade": "true"}).status_code == 204
    assert alice.get(base).status_code == 404
    assert list(settings.predictions_dir.iterdir()) == []

"""PoleClient against the real API over HTTP (embedded database and queue); no worker runs except in the slow test."""

from __future__ import annotations

import zipfile

import pytest

from pole.client import PoleApiError, PoleClient
from tests.app.conftest import new_key
from tests.app.service import FAST_CONFIG, WorkerProcess
from tests.pole.conftest import DATASET_IMAGES


def image_ids(dataset_folder) -> list[str]:
    rows = (dataset_folder / "tags.csv").read_text().splitlines()[1:]
    return [row.split(",")[0].removesuffix(".png") for row in rows]


def test_an_uploaded_dataset_reads_back(client, dataset_zip, dataset_folder):
    dataset = client.upload_dataset(dataset_zip)
    assert dataset["image_count"] == DATASET_IMAGES
    assert dataset["classes"] == (dataset_folder / "classes.txt").read_text().split()
    assert client.get_dataset(dataset["id"]) == dataset
    assert [d["id"] for d in client.list_datasets()] == [dataset["id"]]
    images = list(client.list_images(dataset["id"]))
    assert [im["id"] for im in images] == image_ids(dataset_folder)
    assert all(im["has_mask"] for im in images)


def test_a_refused_upload_raises_with_the_status_and_the_apis_detail(client, tmp_path):
    not_a_zip = tmp_path / "notes.zip"
    not_a_zip.write_text("just text")
    with pytest.raises(PoleApiError) as refused:
        client.upload_dataset(not_a_zip)
    assert refused.value.status == 400
    assert "not a zip archive" in refused.value.detail
    assert refused.value.path == "/v1/datasets"
    assert str(refused.value).startswith("upload: HTTP 400 from /v1/datasets: archive refused")
    assert list(client.list_datasets()) == []


def test_unknown_ids_and_bad_keys_raise_with_the_apis_detail(api, client):
    with pytest.raises(PoleApiError) as missing:
        client.get_job("nope")
    assert missing.value.status == 404 and "GET /v1/jobs lists yours" in missing.value.detail
    with PoleClient(api.url, "pole_not-a-key") as stranger, pytest.raises(PoleApiError) as refused:
        stranger.get_dataset("nope")
    assert refused.value.status == 401 and "pole keys create" in refused.value.detail


def test_lists_follow_next_cursor_one_item_per_page(client, dataset_zip, dataset_folder):
    dataset_id = client.upload_dataset(dataset_zip)["id"]
    paged = [im["id"] for im in client.list_images(dataset_id, page_size=1)]
    assert paged == image_ids(dataset_folder)
    jobs = [client.create_job(dataset_id, preset="cpu-small")["id"] for _ in range(3)]
    assert [j["id"] for j in client.list_jobs(page_size=1)] == jobs[::-1]  # newest first
    client.cancel_job(jobs[1])
    assert [j["id"] for j in client.list_jobs(state="cancelled", page_size=1)] == [jobs[1]]
    assert [j["id"] for j in client.list_jobs(dataset_id=dataset_id, state="queued", page_size=1)] == [jobs[2], jobs[0]]


def test_an_idempotency_key_replays_the_first_job(client, dataset_zip):
    dataset_id = client.upload_dataset(dataset_zip)["id"]
    first = client.create_job(dataset_id, preset="cpu-small", config={"seed": 3}, idempotency_key="shapes-1")
    again = client.create_job(dataset_id, preset="cpu-small", config={"seed": 3}, idempotency_key="shapes-1")
    assert again["id"] == first["id"] and first["config"]["seed"] == 3
    with pytest.raises(PoleApiError) as conflict:
        client.create_job(dataset_id, preset="cpu-small", config={"seed": 4}, idempotency_key="shapes-1")
    assert conflict.value.status == 409 and "different request body" in conflict.value.detail
    assert client.create_job(dataset_id, preset="cpu-small")["id"] != first["id"]


def test_following_a_job_ends_at_its_final_state(client, dataset_zip, tmp_path):
    dataset_id = client.upload_dataset(dataset_zip)["id"]
    job_id = client.create_job(dataset_id, preset="cpu-small")["id"]
    assert client.get_job(job_id)["state"] == "queued"
    assert client.cancel_job(job_id)["state"] == "cancelled"
    assert [job["state"] for job in client.follow_job(job_id, poll_seconds=0.05)] == ["cancelled"]
    with pytest.raises(PoleApiError) as not_yet:
        client.download_archive(job_id, tmp_path / "masks.zip")
    assert not_yet.value.status == 409 and "once it has succeeded" in not_yet.value.detail
    assert list(client.list_selections(job_id)) == []
    with pytest.raises(PoleApiError) as unknown:
        client.delete_dataset(dataset_id + "x")
    assert unknown.value.status == 404
    with pytest.raises(PoleApiError) as has_jobs:
        client.delete_dataset(dataset_id)
    assert has_jobs.value.status == 409 and "?cascade=true" in has_jobs.value.detail
    client.delete_dataset(dataset_id, cascade=True)
    assert list(client.list_datasets()) == []


@pytest.mark.slow
def test_a_job_runs_to_its_archive_and_selections(api, settings, dataset_zip, dataset_folder, tmp_path):
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with PoleClient(api.url, new_key(settings, "dave")) as client:
            dataset_id = client.upload_dataset(dataset_zip)["id"]
            job = client.create_job(dataset_id, preset="cpu-small", config=FAST_CONFIG)
            states = [seen["state"] for seen in client.follow_job(job["id"], poll_seconds=0.2)]
            assert states[-1] == "succeeded", worker.log()
            archive = client.download_archive(job["id"], tmp_path / "masks.zip")
            with zipfile.ZipFile(archive) as zf:
                masks = [n for n in zf.namelist() if n.startswith("SegmentationClass/")]
            assert len(masks) == DATASET_IMAGES
            assert set(client.get_metrics(job["id"])["stages"]) == {"eval_cams", "eval_masks"}
            selections = list(client.list_selections(job["id"], page_size=1))
            assert selections == list(client.list_selections(job["id"]))
            tags = {
                row.split(",")[0].removesuffix(".png"): row.split(",")[1].split("|")
                for row in (dataset_folder / "tags.csv").read_text().splitlines()[1:]
            }
            assert sorted((s["image"], s["class"]) for s in selections) == sorted(
                (image, name) for image, names in tags.items() for name in names
            )
            circles = list(client.list_selections(job["id"], class_name="circle", page_size=1))
            assert {s["image"] for s in circles} == {image for image, names in tags.items() if "circle" in names}
    finally:
        worker.stop()

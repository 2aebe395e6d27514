"""Client against the real API over HTTP (embedded database and queue); a real worker where a job must run."""

from __future__ import annotations

import zipfile

import httpx
import pytest

from ml.data.archive import zip_folder
from pole.client import Client, DatasetInvalid, PoleApiError
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
    with Client(api.url, "pole_not-a-key") as stranger, pytest.raises(PoleApiError) as refused:
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


def test_a_folder_is_zipped_and_sent_with_its_progress_then_waited_for_until_ready(client, dataset_folder, tmp_path):
    sent = []
    dataset = client.upload_dataset(dataset_folder, progress=lambda done, total: sent.append((done, total)))
    assert dataset["state"] == "ready" and dataset["image_count"] == DATASET_IMAGES
    assert dataset["name"] == f"{dataset_folder.name}.zip"
    total = zip_folder(dataset_folder, tmp_path / "same.zip").stat().st_size  # the same files zip to the same size
    assert {t for _, t in sent} == {total} and [d for d, _ in sent] == sorted(d for d, _ in sent)
    assert sent[-1][0] == total


def test_an_upload_not_waited_for_is_validating_and_waited_for_later(client, dataset_zip):
    first = client.upload_dataset(dataset_zip, wait=False)
    assert first["state"] == "validating"
    seen = []
    ready = client.wait_for_dataset(first["id"], progress=seen.append, poll_seconds=0.05)
    assert ready["state"] == "ready" and ready["image_count"] == DATASET_IMAGES
    assert seen[-1] == ready and all(d["state"] == "validating" for d in seen[:-1])


def test_a_dataset_refused_by_the_background_checks_raises_with_every_problem(client, dataset_folder, tmp_path):
    lines = (dataset_folder / "tags.csv").read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",hexagon"
    lines[4] = lines[4].split(",")[0] + ",octagon"
    (dataset_folder / "tags.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetInvalid) as refused:
        client.upload_dataset(dataset_folder)
    problems = refused.value.problems
    assert [(p["file"], p["line"]) for p in problems] == [("tags.csv", 3), ("tags.csv", 5)]
    assert "hexagon" in problems[0]["message"] and "octagon" in problems[1]["message"]
    assert isinstance(refused.value, PoleApiError) and refused.value.status == 422
    assert refused.value.dataset["state"] == "invalid"
    assert str(refused.value).startswith(f"upload: HTTP 422 from /v1/datasets/{refused.value.dataset['id']}: ")
    assert "2 problem(s): tags.csv:3: " in str(refused.value)


def test_the_key_comes_from_pole_api_key_and_its_absence_is_explained(api, settings, monkeypatch):
    monkeypatch.setenv("POLE_API_KEY", new_key(settings, "erin"))
    with Client(api.url) as from_env:
        assert list(from_env.list_datasets()) == []
    monkeypatch.delenv("POLE_API_KEY")
    with pytest.raises(ValueError, match="set POLE_API_KEY"):
        Client(api.url)


def test_a_client_over_an_http_client_leaves_it_open(api, settings, dataset_zip):
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {new_key(settings, 'fay')}"}) as http:
        with Client.over(http) as client:
            dataset_id = client.upload_dataset(dataset_zip)["id"]
        assert http.get(f"/v1/datasets/{dataset_id}").json()["state"] == "ready"


def test_waiting_for_a_job_no_worker_takes_times_out_with_its_state(client, dataset_zip):
    job = client.create_job(client.upload_dataset(dataset_zip)["id"], preset="cpu-small")
    seen = []
    with pytest.raises(TimeoutError, match=f"still queued after 0.3 s: {job['id']}"):
        client.wait_for_job(job["id"], progress=seen.append, poll_seconds=0.05, timeout=0.3)
    assert {j["state"] for j in seen} == {"queued"}
    with pytest.raises(PoleApiError) as unknown:
        client.create_job(
            parent_job_id=job["id"] + "x", overrides=[{"class": "circle", "action": "use", "word": "disc"}]
        )
    assert unknown.value.status == 404


def test_a_job_runs_to_its_archives_selections_and_a_derived_job(api, settings, dataset_zip, dataset_folder, tmp_path):
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with Client(api.url, new_key(settings, "dave")) as client:
            sent = []
            dataset_id = client.upload_dataset(dataset_zip, progress=lambda done, total: sent.append(done))["id"]
            assert sent[-1] == dataset_zip.stat().st_size
            job = client.create_job(dataset_id, preset="cpu-small", config=FAST_CONFIG)
            seen = []
            final = client.wait_for_job(job["id"], progress=seen.append, poll_seconds=0.2)
            assert final["state"] == "succeeded", worker.log()
            assert seen[-1] == final and [j["progress"] for j in seen] == sorted(j["progress"] for j in seen)
            # A 0.2 s poll can miss a short stage (export); train_cam lasts long enough to be seen on any machine.
            assert "running" in {j["state"] for j in seen} and "train_cam" in {j["stage"] for j in seen}

            received = []
            archive = client.download_archive(
                job["id"], tmp_path / "masks.zip", progress=lambda done, total: received.append((done, total))
            )
            assert received[-1] == (archive.stat().st_size, archive.stat().st_size)
            with zipfile.ZipFile(archive) as zf:
                assert len([n for n in zf.namelist() if n.startswith("SegmentationClass/")]) == DATASET_IMAGES
            # A format the job did not export: answered 202 while the worker builds it, then downloaded.
            index_png = client.download_archive(job["id"], tmp_path / "index.zip", export_format="index_png")
            with zipfile.ZipFile(index_png) as zf:
                assert len([n for n in zf.namelist() if n.startswith("masks/")]) == DATASET_IMAGES
                assert zf.read("classes.txt").decode().split() == ["background", "square", "circle", "triangle"]
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

            # Words corrected (`use` takes a word outside the candidates too): one override stored on its
            # own, one sent with the derived job.
            stored = client.add_override(job["id"], "circle", "use", "disc")
            assert (stored["class"], stored["action"], stored["word"], stored["image"]) == (
                "circle",
                "use",
                "disc",
                None,
            )
            square = next(s for s in selections if s["class"] == "square")["image"]
            derived = client.create_job(
                parent_job_id=job["id"],
                overrides=[{"image": square, "class": "square", "action": "use", "word": "box"}],
            )
            assert derived["parent_id"] == job["id"] and derived["dataset_id"] == dataset_id
            overrides = client.list_overrides(job["id"])
            assert [(o["class"], o["image"], o["word"]) for o in overrides] == [
                ("circle", None, "disc"),
                ("square", square, "box"),
            ]
            client.cancel_job(derived["id"])
            assert client.wait_for_job(derived["id"], poll_seconds=0.2, timeout=120)["state"] in (
                "cancelled",
                "succeeded",
            )
    finally:
        worker.stop()

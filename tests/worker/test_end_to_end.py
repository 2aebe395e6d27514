"""The whole service over real HTTP against a real worker process running the real cpu-small pipeline.

Embedded (SQLite + the file queue): upload, cancel while running, a stage that fails, an image that
went bad after upload, and the full round trip with the archive and the selections. Scale-out
(PostgreSQL + Redis): the worker is killed with SIGKILL mid-job and the job still succeeds after a
restart, resumed from its last finished stage with nothing recorded twice.
"""

from __future__ import annotations

import io
import time
import zipfile

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.db import create_db_engine
from app.models import JobStage, Selection, StageMetrics
from tests.app.conftest import new_key
from tests.app.service import (
    FAST_CONFIG,
    REDIS_URL,
    ApiServer,
    WorkerProcess,
    assert_invisible_to,
    create_postgres_database,
    drop_postgres_database,
    drop_redis_keys,
    make_dataset_zip,
    make_settings,
    require_redis,
    small_dataset,
    upload,
    wait_for,
)

IMAGES = 6


@pytest.fixture
def dataset(tmp_path):
    """(zip path, {image id: tags}) of a 6-image dataset with ground truth."""
    root = small_dataset(tmp_path / "small", images=IMAGES)
    rows = (root / "tags.csv").read_text().splitlines()[1:]
    tags = {line.split(",")[0].removesuffix(".png"): line.split(",")[1].split("|") for line in rows}
    return make_dataset_zip(root, tmp_path / "small.zip"), tags


def check_round_trip(client, job: dict, tags: dict[str, list[str]], failed: set[str] = frozenset()) -> None:
    """What a succeeded job offers: archive, selections, per-image views, metrics."""
    job_id = job["id"]
    kept = {image: t for image, t in tags.items() if image not in failed}
    assert job["progress"] == 1.0 and job["error"] is None
    assert all(s["state"] == "finished" and s["finished_at"] >= s["started_at"] for s in job["stages"])
    assert [s["name"] for s in job["stages"]][:3] == ["train_cam", "select_prompts", "train_pole"]
    assert set(job["failed_images"]) == set(failed)
    assert job["checkpoints"]["train_cam"] and job["checkpoints"]["train_pole"]

    archive = client.get(f"/v1/jobs/{job_id}/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    assert archive.headers["content-disposition"].startswith("attachment")
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    masks = sorted(n.rsplit("/", 1)[1] for n in names if "SegmentationClass/" in n and n.endswith(".png"))
    assert masks == sorted(f"{image}.png" for image in kept)

    selections, cursor = [], None
    while True:  # two per page, to walk the cursor
        page = client.get(
            f"/v1/jobs/{job_id}/selections", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        selections += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted((s["image"], s["class"]) for s in selections) == sorted((i, c) for i, t in kept.items() for c in t)
    for s in selections:
        assert s["chosen"] in s["candidates"] and len(s["scores"]) == len(s["candidates"])
    circles = client.get(f"/v1/jobs/{job_id}/selections", params={"class": "circle"}).json()["items"]
    assert {s["image"] for s in circles} == {i for i, t in kept.items() if "circle" in t}

    image = next(iter(kept))
    view = client.get(f"/v1/jobs/{job_id}/images/{image}").json()
    assert view["tags"] == kept[image] and [s["class"] for s in view["selections"]] == kept[image]
    for kind in ("mask", "overlay", "cams"):
        png = client.get(view["links"][kind])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), (kind, png.text[:200])
    mask, overlay = (Image.open(io.BytesIO(client.get(view["links"][kind]).content)) for kind in ("mask", "overlay"))
    assert overlay.width == mask.width and overlay.height > mask.height  # the legend of the class colours

    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert metrics["has_ground_truth"] and set(metrics["stages"]) == {"eval_cams", "eval_masks"}
    assert all(0.0 <= m["miou"] <= 1.0 and set(m["per_class_iou"]) for m in metrics["stages"].values())
    assert job["metrics"] == metrics["stages"]


def test_embedded_service_runs_cancels_and_fails_jobs(tmp_path, dataset):
    zip_path, tags = dataset
    settings = make_settings(tmp_path / "data", allow_weight_files=True)  # to ask for a missing one
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            uploaded = upload(alice, zip_path)
            assert uploaded.status_code == 200 and uploaded.json()["state"] == "ready", uploaded.text
            dataset_id = uploaded.json()["id"]
            # An image that went bad after the upload: the job drops and lists it, and goes on.
            (settings.datasets_dir / dataset_id / "images" / "img05.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

            # 1. cancel while running: a long train_cam, stopped at its next batch boundary
            slow = {**FAST_CONFIG, "train_cam": {"epochs": 200, "batch_size": 2}}
            job = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small", "config": slow}).json()
            running = wait_for(
                alice, job["id"], lambda j: j["stage"] == "train_cam" and j["stage_progress"] > 0, 180, "train_cam"
            )
            assert running["state"] == "running" and running["attempts"] == 1
            asked = time.monotonic()
            assert alice.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] in ("cancelling", "cancelled")
            cancelled = wait_for(alice, job["id"], lambda j: j["state"] == "cancelled", 30, "the cancel")
            assert time.monotonic() - asked < 5, "a batch of 2 tiny images takes well under a second"
            assert cancelled["message"] == "cancelled during train_cam"
            assert [(s["name"], s["finished_at"]) for s in cancelled["stages"]] == [("train_cam", None)]
            assert not (settings.jobs_dir / job["id"] / "train_cam").exists()

            # 2. missing weights fail the job before its first stage, with the reason, without retries
            broken = {"models": {"cam_weights": str(tmp_path / "missing.pth")}}
            job = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small", "config": broken})
            failed = wait_for(alice, job.json()["id"], lambda j: j["state"] == "failed", 120, "the failure")
            assert (
                failed["error"].startswith("preparing the run failed: ") and "missing.pth not found" in failed["error"]
            )
            assert failed["attempts"] == 1

            # 3. the round trip
            body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": FAST_CONFIG}
            job = alice.post("/v1/jobs", json=body).json()
            done = wait_for(alice, job["id"], lambda j: j["state"] in ("succeeded", "failed"), 400, "the pipeline")
            assert done["state"] == "succeeded", (done, worker.log())
            assert done["attempts"] == 1
            assert "img05" in done["failed_images"]
            # The cpu-small preset's CAM network starts from random weights: said before the first stage.
            checks = {(w["stage"], w["check"]) for w in done["warnings"]}
            assert ("preflight", "random_weights") in checks, done["warnings"]
            check_round_trip(alice, done, tags, failed={"img05"})
            view = alice.get(f"/v1/jobs/{job['id']}/images/img05").json()
            assert view["failed"] and view["links"] == {}
            assert alice.get(f"/v1/jobs/{job['id']}/images/img05/mask.png").status_code == 404

            with api.client(new_key(settings, "bob")) as bob:
                assert_invisible_to(bob, dataset_id, job["id"], "img00")
        finally:
            worker.stop()


@pytest.fixture
def scale_out_settings(tmp_path):
    require_redis()
    database_url = create_postgres_database()
    settings = make_settings(tmp_path / "shared", database_url=database_url, broker_url=REDIS_URL)
    yield settings
    drop_redis_keys(f"{settings.queue}:")
    drop_postgres_database(database_url)


def test_scale_out_job_survives_kill_9_of_its_worker(tmp_path, dataset, scale_out_settings):
    zip_path, tags = dataset
    settings = scale_out_settings
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        assert alice.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok", "workers": "0 alive"}
        worker = WorkerProcess(settings, tmp_path / "worker.log", name="gpu-1@rack").start()
        try:
            dataset_id = upload(alice, zip_path).json()["id"]
            # train_pole made long enough to be caught in the middle, after the stages before it finished.
            config = {**FAST_CONFIG, "train_pole": {"epochs": 10, "batch_size": 2}}
            body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": config}
            job_id = alice.post("/v1/jobs", json=body).json()["id"]
            before = wait_for(alice, job_id, lambda j: j["stage"] == "train_pole", 300, "train_pole")
            worker.kill()
            first_stage = before["stages"][0]
            assert first_stage["name"] == "train_cam" and first_stage["state"] == "finished"
            assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "running"  # nobody has told the database

            worker.start()  # same name: it knows the job was its own and requeues it at once
            done = wait_for(alice, job_id, lambda j: j["state"] in ("succeeded", "failed"), 400, "the resumed job")
            assert done["state"] == "succeeded", (done, worker.log())
        finally:
            worker.stop()
        assert done["attempts"] == 2
        # Resumed, not restarted: train_cam kept the times of the first attempt.
        assert done["stages"][0] == {**first_stage, "state": "finished"}
        check_round_trip(alice, done, tags)
        engine = create_db_engine(settings.database_url)
        with engine.connect() as conn:
            count = lambda table: conn.scalar(select(func.count()).select_from(table))  # noqa: E731
            pairs = sum(len(t) for t in tags.values())
            assert (count(Selection), count(StageMetrics), count(JobStage)) == (pairs, 2, len(done["stages"]))
        engine.dispose()

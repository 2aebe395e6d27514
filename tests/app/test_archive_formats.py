"""An archive in a format the job did not export, over real HTTP, on a job finished as a worker would
(tests/app/finished_job.py, img05 dropped): the first request queues one build and is answered 202,
the build turns the finished run into that format, and from then on the zip is served like the
job's own. The worker's part is the task the queued message names, run here on the message's own
arguments."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from app.db import create_db_engine, make_sessionmaker
from app.queue import BUILD_ARCHIVE
from app.storage import run_layout
from ml.spec.config import resolve_config
from ml.spec.registry import final_masks_stage
from tests.app.finished_job import finish_job
from tests.app.service import take_queued_tasks, upload
from worker.archives import build_archive

DROPPED = "img05"


def run_builds(settings, tasks: list[tuple[str, dict]]) -> None:
    """What a worker does with each build message taken off the queue."""
    engine = create_db_engine(settings.database_url)
    for task, kwargs in tasks:
        assert task == BUILD_ARCHIVE
        build_archive(make_sessionmaker(engine), settings, **kwargs)
    engine.dispose()


@pytest.fixture
def finished_job(alice, settings, dataset_zip) -> tuple[str, dict]:
    dataset = upload(alice, dataset_zip).json()
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "cpu-small"}).json()["id"]
    finish_job(settings, job_id, failed_image=DROPPED)
    assert [task for task, _ in take_queued_tasks(settings)] == ["pole.run_job"]  # the run no worker takes here
    return job_id, dataset


def test_a_format_the_job_did_not_export_is_built_once_and_then_served(alice, settings, finished_job):
    job_id, dataset = finished_job
    archive = f"/v1/jobs/{job_id}/archive"
    for _ in range(2):
        pending = alice.get(archive, params={"format": "coco"})
        assert pending.status_code == 202 and int(pending.headers["retry-after"]) > 0
        assert pending.json()["detail"].startswith("the coco archive is being built")
    queued = take_queued_tasks(settings)
    assert queued == [(BUILD_ARCHIVE, {"job_id": job_id, "export_format": "coco"})]  # one, however often asked

    run_builds(settings, queued)
    served = alice.get(archive, params={"format": "coco"})
    assert served.status_code == 200 and served.headers["content-type"] == "application/zip"
    assert f"pole_masks_{job_id}_coco.zip" in served.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(served.content)) as zf:
        coco = json.loads(zf.read("annotations/instances_train.json"))
        assert {"selections.csv", "failed_images.csv", "metrics.json", "config.json"} <= set(zf.namelist())
    assert [category["name"] for category in coco["categories"]] == dataset["classes"]
    exported = sorted(image["file_name"] for image in coco["images"])
    assert exported == [f"img{i:02d}.png" for i in range(6) if f"img{i:02d}" != DROPPED]
    assert coco["annotations"] and all(a["iscrowd"] == 0 for a in coco["annotations"])

    again = alice.get(archive, params={"format": "coco"})
    assert again.status_code == 200 and again.content == served.content
    assert take_queued_tasks(settings) == []  # kept: asked again, built once
    assert alice.get(archive).status_code == 200  # the job's own format, as before


def test_a_build_that_fails_is_answered_with_its_reason(alice, settings, finished_job):
    job_id, _ = finished_job
    layout = run_layout(settings, job_id)
    layout.mask(final_masks_stage(resolve_config("cpu-small")), "img00").unlink()
    assert alice.get(f"/v1/jobs/{job_id}/archive", params={"format": "index_png"}).status_code == 202
    run_builds(settings, take_queued_tasks(settings))
    failed = alice.get(f"/v1/jobs/{job_id}/archive", params={"format": "index_png"})
    assert failed.status_code == 410
    assert failed.json()["detail"].startswith("building the index_png archive from this job's run failed: ")
    assert "img00.png is missing" in failed.json()["detail"]
    assert not layout.archive("index_png").exists() and not layout.archive_request("index_png").exists()


def test_a_format_pole_does_not_know_is_404_and_queues_nothing(alice, settings, finished_job):
    job_id, _ = finished_job
    refused = alice.get(f"/v1/jobs/{job_id}/archive", params={"format": "../cvat"})
    assert refused.status_code == 404 and "formats pole knows: cvat, coco, index_png" in refused.json()["detail"]
    assert take_queued_tasks(settings) == []

"""A job is refused at creation when no live worker holds its weights (app.job_service), as the workers'
rows in the database say, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.db import create_db_engine, make_sessionmaker, session_scope
from app.job_service import NO_LIVE_WORKER
from app.live_workers import record_worker_heartbeat
from app.models import Worker, utcnow
from tests.app.conftest import new_key
from tests.app.service import ApiServer, make_settings, upload

# What every worker holds: the sample world's CLIP ships with pole.
SHIPPED_ONLY = {"clip": [["pole-tiny", "pole-world"]], "backbone": []}
PAPER_WEIGHTS = {
    "clip": [["ViT-B-32", "openai"], ["pole-tiny", "pole-world"]],
    "backbone": [["resnet101", "imagenet"], ["resnet50", "imagenet"]],  # resnet101: train_seg's DeepLab
}


@pytest.fixture
def settings(backend):
    return backend


@pytest.fixture
def dataset_id(alice, dataset_zip):
    response = upload(alice, dataset_zip)
    assert response.status_code == 200 and response.json()["state"] == "ready", response.text
    return response.json()["id"]


def register_worker(settings, name: str, held_weights: dict | None, heartbeat_age_s: float = 0) -> None:
    """The row a worker's heartbeat writes, `heartbeat_age_s` old."""
    engine = create_db_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    beat = {"hostname": "gpu-box", "pid": os.getpid(), "queue": settings.queue, "started_at": utcnow()}
    record_worker_heartbeat(sessions, name=name, held_weights=held_weights, **beat)
    with session_scope(sessions) as session:
        aged = utcnow() - timedelta(seconds=heartbeat_age_s)
        session.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=aged))
    engine.dispose()


def test_a_job_whose_weights_no_live_worker_holds_is_refused_naming_each_setting(settings, alice, dataset_id):
    register_worker(settings, "cpu-1@here", SHIPPED_ONLY)
    refused = alice.post("/v1/jobs", json={"dataset_id": dataset_id})  # no preset: the default, paper
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("no live worker has the weights of models.cam_weights='imagenet' with models.cam_backbone")
    assert "models.clip_pretrained='openai'" in detail and "models.irn_weights='imagenet'" in detail
    assert "live workers hold: pole-tiny/pole-world, random" in detail and "POLE_WEIGHTS_DIR" in detail
    assert alice.get("/v1/jobs").json()["items"] == []

    for preset in ("cpu-small", "demo"):  # the shipped CLIP and random backbones
        accepted = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": preset})
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["message"] is None
    # Stages the config leaves out load nothing: the CAM baseline needs no CLIP.
    baseline = {
        "train_pole": {"enabled": False},
        "models": {"cam_weights": "random", "irn_weights": "cam", "seg_weights": "random"},
    }
    accepted = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper", "config": baseline})
    assert accepted.status_code == 201, accepted.text


def test_a_job_goes_ahead_once_one_live_worker_holds_all_its_weights(settings, alice, dataset_id):
    register_worker(settings, "clip-only@here", {"clip": [["ViT-B-32", "openai"]], "backbone": []})
    register_worker(settings, "resnet-only@here", {"clip": [], "backbone": PAPER_WEIGHTS["backbone"]})
    refused = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"].startswith("no single live worker has all the weights of models.cam_weights")

    register_worker(settings, "gpu-1@rack", PAPER_WEIGHTS)
    accepted = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["message"] is None


def test_without_a_live_worker_that_knows_what_it_holds_the_job_waits_in_the_queue(settings, alice, dataset_id):
    accepted = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["message"] == NO_LIVE_WORKER

    register_worker(settings, "gone@here", SHIPPED_ONLY, heartbeat_age_s=settings.stale_after_seconds + 1)
    accepted = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["message"] == NO_LIVE_WORKER

    register_worker(settings, "starting@here", None)  # alive, its first scan not done yet: it may hold them
    accepted = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"})
    assert accepted.status_code == 201, accepted.text
    # No word of a missing worker; only its place behind the key's two earlier jobs (the per-key cap).
    assert accepted.json()["message"] == "queued behind 2 of your jobs"


def test_weight_files_are_left_to_the_worker_that_takes_the_job(tmp_path, dataset_zip):
    settings = make_settings(tmp_path / "data", allow_weight_files=True)
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        dataset_id = upload(alice, dataset_zip).json()["id"]
        register_worker(settings, "cpu-1@here", SHIPPED_ONLY)
        models = {"cam_weights": "/srv/weights/r50.pth", "irn_weights": "cam"}
        body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": {"models": models}}
        assert alice.post("/v1/jobs", json=body).status_code == 201

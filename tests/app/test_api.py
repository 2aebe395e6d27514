"""The API's rules over real HTTP, with no worker running: keys, owners, idempotency, cancel, delete."""

from __future__ import annotations

import pytest

from app.db import create_db_engine, make_sessionmaker, session_scope
from app.security import revoke_key
from tests.app.conftest import new_key
from tests.app.finished_job import finish_job
from tests.app.service import ApiServer, assert_invisible_to, make_settings, upload


@pytest.fixture
def dataset_id(alice, dataset_zip):
    response = upload(alice, dataset_zip)
    assert response.status_code == 200 and response.json()["state"] == "ready", response.text
    return response.json()["id"]


def test_health_and_readiness(api):
    with api.client() as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = anonymous.get("/readyz")
    assert ready.status_code == 503  # no worker runs in these tests (tests/app/test_readiness.py starts one)
    assert ready.json() == {"status": "not ready", "checks": {"database": "ok", "broker": "ok", "workers": "0 alive"}}


def test_requests_without_a_valid_key_get_401(api, settings, alice):
    with api.client() as anonymous:
        response = anonymous.get("/v1/datasets")
    assert response.status_code == 401
    assert "pole keys create" in response.json()["detail"]
    with api.client("pole_not-a-real-key") as stranger:
        assert stranger.get("/v1/jobs").status_code == 401
    key = new_key(settings, "carol")
    with api.client(key) as carol:
        assert carol.get("/v1/jobs").status_code == 200
        engine = create_db_engine(settings.database_url)
        with session_scope(make_sessionmaker(engine)) as session:
            revoke_key(session, key_ref=key[:11])
        engine.dispose()
        assert carol.get("/v1/jobs").status_code == 401


def test_a_job_is_created_with_its_resolved_config(alice, dataset_id):
    response = alice.post(
        "/v1/jobs",
        json={
            "dataset_id": dataset_id,
            "preset": "cpu-small",
            "config": {"seed": 7, "train_cam": {"epochs": 1}},
            "synonyms": {"circle": ["disc", "ring"]},
        },
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued" and job["attempts"] == 0 and job["progress"] == 0.0
    assert job["seed"] == 7 and job["config"]["seed"] == 7
    assert job["config"]["train_cam"]["epochs"] == 1
    assert job["config"]["train_cam"]["batch_size"] == 8  # the preset's value, resolved into the row
    assert job["config"]["select_prompts"]["synonyms"] == {"circle": ["disc", "ring"]}
    assert job["models"] == job["config"]["models"]
    assert alice.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"preset": "fastest"}, "unknown preset 'fastest'; available: "),
        ({"config": {"train_cam": {"epochs": "five"}}}, "train_cam.epochs: expected an integer"),
        ({"config": {"trian_cam": {}}}, "unknown key(s) trian_cam"),
        ({"synonyms": {"dragon": ["wyrm"]}}, "not in the dataset: dragon"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"config": {"models": {"cam_weights": "/etc/passwd"}}}, "weight files cannot be named through the API"),
        ({"config": {"models": {"clip_pretrained": "evil.pt"}}}, "POLE_ALLOW_WEIGHT_FILES=1"),
        ({"config": {"models": {"seg_weights": "/etc/passwd"}}}, "models.seg_weights='/etc/passwd': weight files"),
    ],
)
def test_bad_job_requests_say_what_to_fix(alice, dataset_id, body, phrase):
    response = alice.post("/v1/jobs", json={"dataset_id": dataset_id, **body})
    assert response.status_code == 422
    assert phrase in response.json()["detail"]
    assert alice.get("/v1/jobs").json()["items"] == []


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(alice, dataset_id):
    headers = {"Idempotency-Key": "upload-42"}
    first = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}, headers=headers)
    again = alice.post("/v1/jobs", json={"preset": "cpu-small", "dataset_id": dataset_id}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"}, headers=headers)
    assert other.status_code == 409 and "different request body" in other.json()["detail"]
    assert len(alice.get("/v1/jobs").json()["items"]) == 1


def test_jobs_are_listed_newest_first_by_cursor_and_filtered(alice, dataset_id):
    ids = [
        alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"] for _ in range(3)
    ]
    first = alice.get("/v1/jobs", params={"limit": 2}).json()
    second = alice.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    alice.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = alice.get("/v1/jobs", params={"state": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]


def test_cancel_of_a_queued_job_is_immediate_and_final(alice, dataset_id):
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    cancelled = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    archive = alice.get(f"/v1/jobs/{job_id}/archive")
    assert archive.status_code == 409 and "once it has succeeded" in archive.json()["detail"]


def test_a_dataset_without_jobs_is_deleted_at_once(alice, settings, dataset_id):
    assert alice.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert not (settings.datasets_dir / dataset_id).exists()


def test_a_dataset_in_use_cannot_be_deleted_until_its_jobs_end(alice, settings, dataset_id):
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    refused = alice.delete(f"/v1/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"dataset is in use by queued or running job(s) {job_id}; cancel them or wait until they end, "
        "then add ?cascade=true to delete its 1 job(s) and their results too"
    )
    refused = alice.delete(f"/v1/datasets/{dataset_id}", params={"cascade": "true"})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"dataset is in use by queued or running job(s) {job_id}; cancel them or wait until they end"
    )
    alice.post(f"/v1/jobs/{job_id}/cancel")
    assert alice.delete(f"/v1/datasets/{dataset_id}", params={"cascade": "true"}).status_code == 204
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert alice.get(f"/v1/jobs/{job_id}").status_code == 404
    assert not (settings.datasets_dir / dataset_id).exists()


def test_a_dataset_with_finished_jobs_is_deleted_with_their_results_only_on_cascade(alice, settings, dataset_id):
    finished, cancelled = (
        alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"] for _ in range(2)
    )
    alice.post(f"/v1/jobs/{cancelled}/cancel")
    finish_job(settings, finished, failed_image="img05")
    refused = alice.delete(f"/v1/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert refused.json()["detail"] == "dataset has 2 job(s); add ?cascade=true to delete them and their results too"
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 200
    assert alice.get(f"/v1/jobs/{finished}/archive").status_code == 200
    assert (settings.jobs_dir / finished).is_dir()

    assert alice.delete(f"/v1/datasets/{dataset_id}", params={"cascade": "true"}).status_code == 204
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert alice.get("/v1/jobs").json()["items"] == []
    assert not (settings.jobs_dir / finished).exists()
    assert not (settings.datasets_dir / dataset_id).exists()


def test_keys_see_nothing_of_each_other(alice, bob, dataset_id):
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    assert_invisible_to(bob, dataset_id, job_id, "img00")
    # ... and what bob could not touch is intact for alice.
    assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 200


def test_unknown_routes_and_bad_ids_answer_json(alice):
    assert alice.get("/v1/jobs/nope").json() == {"detail": "no job 'nope'; GET /v1/jobs lists yours"}
    assert alice.get("/v1/nothing-here").json() == {"detail": "Not Found"}


def test_an_unreachable_queue_makes_the_api_unready_and_creates_no_job(tmp_path, dataset_zip):
    settings = make_settings(tmp_path / "data", broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        ready = alice.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok" and "unreachable" in ready.json()["checks"]["broker"]
        dataset_id = upload(alice, dataset_zip).json()["id"]
        refused = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"})
        assert refused.status_code == 503 and "nothing was created" in refused.json()["detail"]
        assert alice.get("/v1/jobs").json()["items"] == []


def test_job_configs_over_the_operators_limits_are_refused_with_every_excess_named(tmp_path, dataset_zip):
    settings = make_settings(tmp_path / "limited", max_epochs=10, max_loader_workers=2)
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as client:
        dataset_id = upload(client, dataset_zip).json()["id"]
        config = {
            "train_cam": {"epochs": 11},
            "train_irn": {"epochs": 500},
            "train_seg": {"enabled": True, "epochs": 12},
            "num_workers": 3,
        }
        refused = client.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small", "config": config})
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        for part in (
            "train_cam.epochs=11",
            "train_irn.epochs=500",
            "train_seg.epochs=12",
            "POLE_MAX_EPOCHS",
            "num_workers=3",
        ):
            assert part in detail
        config = {"train_cam": {"epochs": 10}, "num_workers": 2}
        accepted = client.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small", "config": config})
        assert accepted.status_code == 201, accepted.text

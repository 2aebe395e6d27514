"""GET /v1/jobs/{id}, the call clients poll, checks keys and owners in its own single trip to a worker
thread: the same answers as the routes that use app.deps' dependencies."""

from __future__ import annotations

from app.db import create_db_engine, make_sessionmaker, session_scope
from app.security import revoke_key
from tests.app.conftest import new_key
from tests.app.service import upload


def test_polling_a_job_answers_its_owner_as_the_list_does(alice, dataset_zip):
    dataset_id = upload(alice, dataset_zip).json()["id"]
    job = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()
    polled = alice.get(f"/v1/jobs/{job['id']}")
    assert polled.status_code == 200
    assert polled.json() == alice.get("/v1/jobs").json()["items"][0]


def test_polling_needs_a_live_key_of_the_jobs_owner(api, settings, alice, bob, dataset_zip):
    dataset_id = upload(alice, dataset_zip).json()["id"]
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    path = f"/v1/jobs/{job_id}"
    with api.client() as anonymous:
        missing = anonymous.get(path)
    assert missing.status_code == 401 and "pole keys create" in missing.json()["detail"]
    assert bob.get(path).status_code == 404
    assert bob.get("/v1/jobs/no-such-job").status_code == 404

    key = new_key(settings, "carol")
    with api.client(key) as carol:
        assert carol.get(path).status_code == 404  # a live key, but not the owner's
        engine = create_db_engine(settings.database_url)
        with session_scope(make_sessionmaker(engine)) as session:
            revoke_key(session, key_ref=key[:11])
        engine.dispose()
        assert carol.get(path).status_code == 401
    assert alice.get(path).status_code == 200

"""POST /v1/jobs and DELETE /v1/datasets/{id} on the same dataset: one decides, the other gets 409.

Both orders are forced deterministically (a row hook deletes the dataset just before the job's
insert), and both requests are also raced for real, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading

import httpx
from sqlalchemy import delete, event, select

from app.db import create_db_engine, make_sessionmaker
from app.models import Dataset, Job
from tests.app.conftest import new_key
from tests.app.service import ApiServer, wait_for_dataset

ROUNDS = 12
JOB = {"preset": "cpu-small"}


def _upload(client: httpx.Client, dataset_zip) -> str:
    with open(dataset_zip, "rb") as f:
        response = client.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")})
    assert response.status_code == 202, response.text
    assert wait_for_dataset(client, response.json()["id"]).json()["state"] == "ready"
    return response.json()["id"]


def _jobs_of(settings, dataset_id: str) -> list[str]:
    engine = create_db_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        ids = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id)))
    engine.dispose()
    return ids


def test_a_dataset_deleted_just_before_the_job_insert_gives_409_and_no_job(backend, dataset_zip):
    other = create_db_engine(backend.database_url)
    with ApiServer(backend) as api, api.client(new_key(backend, "alice")) as client:
        dataset_id = _upload(client, dataset_zip)
        fired = []

        def delete_dataset_first(_mapper, _connection, _target) -> None:
            if not fired:
                fired.append(True)
                with other.begin() as conn:
                    conn.execute(delete(Dataset).where(Dataset.id == dataset_id))

        event.listen(Job, "before_insert", delete_dataset_first)
        try:
            response = client.post("/v1/jobs", json={"dataset_id": dataset_id, **JOB})
        finally:
            event.remove(Job, "before_insert", delete_dataset_first)
        assert fired
        assert response.status_code == 409, response.text
        assert "was deleted while this job was being created" in response.json()["detail"]
        assert "Idempotency-Key" not in response.json()["detail"]
        assert _jobs_of(backend, dataset_id) == []
    other.dispose()


def test_job_creation_and_dataset_deletion_never_both_succeed(backend, dataset_zip):
    outcomes = set()
    with ApiServer(backend) as api:
        key = new_key(backend, "alice")
        creator, deleter = api.client(key), api.client(key)
        for _ in range(ROUNDS):
            dataset_id = _upload(creator, dataset_zip)
            start = threading.Barrier(2)
            results: dict[str, httpx.Response] = {}

            def create(dataset_id=dataset_id, start=start, results=results) -> None:
                start.wait()
                results["job"] = creator.post("/v1/jobs", json={"dataset_id": dataset_id, **JOB})

            def remove(dataset_id=dataset_id, start=start, results=results) -> None:
                start.wait()
                results["delete"] = deleter.delete(f"/v1/datasets/{dataset_id}")

            threads = [threading.Thread(target=create), threading.Thread(target=remove)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            job, deleted = results["job"], results["delete"]
            outcomes.add((job.status_code, deleted.status_code))
            if job.status_code == 201:
                assert deleted.status_code == 409 and "in use" in deleted.json()["detail"], deleted.text
                assert creator.get(f"/v1/jobs/{job.json()['id']}").status_code == 200
                assert creator.get(f"/v1/datasets/{dataset_id}").status_code == 200
            else:
                assert deleted.status_code == 204, deleted.text
                assert job.status_code in (404, 409), job.text
                assert _jobs_of(backend, dataset_id) == []
        creator.close()
        deleter.close()
    assert outcomes <= {(201, 409), (404, 204), (409, 204)}

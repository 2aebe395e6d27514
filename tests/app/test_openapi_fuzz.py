"""The live OpenAPI document, fuzzed by schemathesis over real HTTP: no 5xx, every answer as documented.

The key owns a dataset and three jobs on it: one succeeded with results (one image dropped) and a
segmenter, one cancelled, one running (so the dataset can never be deleted under the run); and two
prediction runs of the succeeded job, one succeeded (one image corrupt), one queued. Three requests in
four carry that key with those ids in the path, the query and the body, so that the routes get past
their 401s and 404s; the rest are sent as generated. Valid and invalid inputs are both generated
(NUL bytes included); the run is deterministic and bounded. The uploads' multipart bodies are not
generated here: tests/app/test_uploads.py, tests/app/test_predictions.py and
tests/app/test_path_inputs.py send bad ones by hand.
"""

from __future__ import annotations

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.routes import datasets, health, jobs, overrides, predictions, results
from tests.app.conftest import new_key
from tests.app.finished_job import add_segmenter, finish_job, run_queued_tasks, start_job
from tests.app.service import ApiServer, make_dataset_zip, make_settings, small_dataset, upload

EXAMPLES_PER_OPERATION = 50
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = sorted(
    (method, route.path)
    for module in (health, datasets, jobs, results, overrides, predictions)
    for route in module.router.routes
    for method in route.methods
)
UPLOADS = {("POST", "/v1/datasets"), ("POST", "/v1/jobs/{job_id}/predictions")}
FUZZED = [op for op in OPERATIONS if op not in UPLOADS]
# Readiness answers its documented 503 here: no worker runs beside this server.
SERVER_ERRORS_EXPECTED = {("GET", "/readyz")}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The API, a key, and the ids it owns by the name they go by in paths, queries and bodies."""
    root = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(root / "data", max_upload_bytes=1 << 20, max_archive_members=100)
    with ApiServer(settings) as api:
        key = new_key(settings, "fuzz")
        with api.client(key) as client:
            dataset = upload(client, make_dataset_zip(small_dataset(root / "small"), root / "small.zip")).json()
            finished, cancelled, running = (
                client.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "cpu-small"}).json()["id"]
                for _ in range(3)
            )
            assert client.post(f"/v1/jobs/{cancelled}/cancel").json()["state"] == "cancelled"
        finish_job(settings, finished, failed_image="img05")
        for reused in ("train_cam", "select_prompts"):  # what a derived job reuses of its parent
            (settings.jobs_dir / finished / reused).mkdir()
        start_job(settings, running)
        add_segmenter(settings, finished)
        # Named as the dataset's images, so that the image ids below name images of both; img05 is corrupt.
        (root / "small" / "images" / "img05.png").write_bytes(b"not an image")
        images = {"file": ("new.zip", make_dataset_zip(root / "small" / "images", root / "new.zip").read_bytes())}
        with api.client(key) as client:
            labelled = client.post(f"/v1/jobs/{finished}/predictions", files=images).json()["id"]
            run_queued_tasks(settings)
            queued = client.post(f"/v1/jobs/{finished}/predictions", files=images).json()["id"]
        ids = {
            "dataset_id": [dataset["id"]],
            "job_id": [finished, cancelled, running],
            "prediction_id": [labelled, queued],
            "image_id": ["img00", "img05"],
            "parent_job_id": [finished, running],  # derived jobs; overrides name the images as "image"
            "image": ["img00", "img05"],
        }
        yield {"api": api, "key": key, "ids": ids}


@pytest.fixture(scope="module")
def live_schema(live):
    return schemathesis.openapi.from_url(f"{live['api'].url}/openapi.json")


@pytest.fixture(scope="module")
def http():
    # Keep-alive connections reused across the run, as a real client would (and faster than reconnecting).
    with requests.Session() as session:
        yield session


def test_every_operation_is_fuzzed(live_schema):
    assert sorted((op.ok().method.upper(), op.ok().path) for op in live_schema.get_all_operations()) == OPERATIONS


@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{method} {path}" for method, path in FUZZED])
def test_operation_answers_as_documented(method, path, live, live_schema, http):
    generated = st.one_of([live_schema[path][method].as_strategy(mode) for mode in GenerationMode])
    owned = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in live["ids"].items()})
    as_owner = st.sampled_from([True, True, True, False])  # most requests get past the key and the ids
    cases = st.builds(_as_owner, generated, owned, st.just(live["key"]), as_owner)
    checks = CONFORMANCE if (method, path) in SERVER_ERRORS_EXPECTED else [not_a_server_error, *CONFORMANCE]

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=cases)
    def call(case: Case) -> None:
        case.call_and_validate(session=http, checks=checks)

    call()


def _as_owner(case: Case, ids: dict[str, str], key: str, as_owner: bool) -> Case:
    """The case sent with the key, its dataset, job and image parameters naming what the key owns."""
    if not as_owner:
        return case
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
    for container in (case.path_parameters, case.query, case.body):
        if isinstance(container, dict):
            container.update((name, value) for name, value in ids.items() if name in container)
    return case

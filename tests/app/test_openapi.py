"""The OpenAPI document the live server serves: every status each operation can answer, one error body
for all of them, and the Bearer key on every /v1 operation. tests/app/test_openapi_fuzz.py holds the
server to it; here is what it must say."""

from __future__ import annotations

import io
import zipfile
from unittest.mock import ANY

import pytest
import schemathesis

from tests.app.finished_job import add_segmenter, finish_job
from tests.app.service import upload, wait_for_dataset

PREDICTION = "/v1/jobs/{job_id}/predictions/{prediction_id}"

# Reviewed by hand: a status added to a route must be added here, with the route's declaration.
DECLARED = {
    ("GET", "/healthz"): {200, 500},
    ("GET", "/readyz"): {200, 500, 503},
    ("POST", "/v1/datasets"): {202, 400, 401, 413, 415, 422, 500},
    ("GET", "/v1/datasets"): {200, 400, 401, 422, 500},
    ("GET", "/v1/datasets/{dataset_id}"): {200, 400, 401, 404, 422, 500},
    ("DELETE", "/v1/datasets/{dataset_id}"): {204, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/datasets/{dataset_id}/images"): {200, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/datasets/{dataset_id}/synonyms"): {200, 400, 401, 404, 409, 422, 500},
    ("POST", "/v1/jobs"): {200, 201, 400, 401, 404, 409, 422, 500, 503},
    ("GET", "/v1/jobs"): {200, 400, 401, 422, 500},
    ("GET", "/v1/jobs/{job_id}"): {200, 400, 401, 404, 422, 500},
    ("POST", "/v1/jobs/{job_id}/cancel"): {200, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/jobs/{job_id}/archive"): {200, 202, 400, 401, 404, 409, 410, 422, 500, 503},
    ("GET", "/v1/jobs/{job_id}/selections"): {200, 400, 401, 404, 422, 500},
    ("GET", "/v1/jobs/{job_id}/images"): {200, 400, 401, 404, 422, 500},
    ("GET", "/v1/jobs/{job_id}/images/{image_id}"): {200, 400, 401, 404, 422, 500},
    ("GET", "/v1/jobs/{job_id}/images/{image_id}/mask.png"): {200, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/jobs/{job_id}/images/{image_id}/overlay.png"): {200, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/jobs/{job_id}/images/{image_id}/cams.png"): {200, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/jobs/{job_id}/metrics"): {200, 400, 401, 404, 422, 500},
    ("GET", "/v1/jobs/{job_id}/words"): {200, 400, 401, 404, 409, 422, 500},
    ("GET", "/v1/jobs/{job_id}/overrides"): {200, 400, 401, 404, 422, 500},
    ("POST", "/v1/jobs/{job_id}/overrides"): {201, 400, 401, 404, 409, 422, 500},
    ("DELETE", "/v1/jobs/{job_id}/overrides/{override_id}"): {204, 400, 401, 404, 422, 500},
    ("GET", "/v1/jobs/{job_id}/model"): {200, 202, 400, 401, 404, 409, 410, 422, 500, 503},
    ("POST", "/v1/jobs/{job_id}/predictions"): {201, 400, 401, 404, 409, 413, 415, 422, 500, 503},
    ("GET", "/v1/jobs/{job_id}/predictions"): {200, 400, 401, 404, 422, 500},
    ("GET", PREDICTION): {200, 400, 401, 404, 422, 500},
    ("GET", f"{PREDICTION}/archive"): {200, 202, 400, 401, 404, 409, 410, 422, 500, 503},
    ("GET", f"{PREDICTION}/images/{{image_id}}/mask.png"): {200, 400, 401, 404, 409, 410, 422, 500},
    ("GET", f"{PREDICTION}/images/{{image_id}}/overlay.png"): {200, 400, 401, 404, 409, 410, 422, 500},
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


@pytest.fixture
def document(api):
    with api.client() as anonymous:
        return anonymous.get("/openapi.json").json()


def _operations(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def test_every_status_each_operation_can_answer_is_declared(document):
    declared = {(method, path): {int(s) for s in op["responses"]} for method, path, op in _operations(document)}
    assert declared == DECLARED


def test_every_error_has_the_one_error_body(document):
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorOut"]["required"] == ["detail"] and schemas["ErrorOut"]["additionalProperties"] is False
    assert schemas["ErrorOut"]["properties"]["detail"]["type"] == "string"
    assert schemas["ErrorOut"]["properties"]["problems"]["items"] == {"$ref": "#/components/schemas/ProblemOut"}
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and (method, path, status) != ("GET", "/readyz", "503"):
                assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (method, path, status)
                assert response["description"], (method, path, status)


def test_every_v1_operation_needs_the_bearer_key_and_health_does_not(document):
    assert document["components"]["securitySchemes"]["HTTPBearer"]["type"] == "http"
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for _method, path, operation in _operations(document):
        expected = [{"HTTPBearer": []}] if path.startswith("/v1/") else None
        assert operation.get("security") == expected, path


def test_binary_results_are_declared_with_their_media_types(document):
    binary = {"schema": {"type": "string", "format": "binary"}}
    for archive in ("/v1/jobs/{job_id}/archive", f"{PREDICTION}/archive"):
        assert document["paths"][archive]["get"]["responses"]["200"]["content"] == {"application/zip": binary}
    images = [f"/v1/jobs/{{job_id}}/images/{{image_id}}/{kind}.png" for kind in ("mask", "overlay", "cams")]
    images += [f"{PREDICTION}/images/{{image_id}}/{kind}.png" for kind in ("mask", "overlay")]
    for path in images:
        assert document["paths"][path]["get"]["responses"]["200"]["content"] == {"image/png": binary}
    model = document["paths"]["/v1/jobs/{job_id}/model"]["get"]["responses"]["200"]["content"]
    assert model == {"application/octet-stream": binary}


def test_upload_answers_match_the_document(api, alice, dataset_zip):
    """The upload's body is not fuzzed, so its answers are checked against the document here."""
    operation = schemathesis.openapi.from_url(f"{api.url}/openapi.json")["/v1/datasets"]["POST"]
    with api.client() as anonymous:
        answers = [anonymous.post("/v1/datasets", files={"file": ("a.zip", b"PK")})]
    answers += [
        alice.post("/v1/datasets", data={"other": "x"}),
        alice.post("/v1/datasets", files={"file": ("a.zip", b"not a zip", "application/zip")}),
        alice.post("/v1/datasets", files={"dataset": ("a.zip", b"PK", "application/zip")}),
        alice.post("/v1/datasets", files={"file": ("a.zip", _listing_a_missing_image(dataset_zip), "application/zip")}),
        alice.post("/v1/datasets", files={"file": ("small.zip", dataset_zip.read_bytes(), "application/zip")}),
    ]
    assert [answer.status_code for answer in answers] == [401, 415, 400, 422, 202, 202]
    # The missing image is found by the checks after the answer.
    checked = wait_for_dataset(alice, answers[4].json()["id"]).json()
    assert checked["state"] == "invalid" and checked["problems"][0]["file"] == "tags.csv"
    for answer in answers:
        answer.request.read()  # multipart bodies go out streamed; the validator reads the request too
        operation.validate_response(answer)


def test_prediction_upload_answers_match_the_document(api, alice, settings, dataset_zip):
    """Neither is this upload's body fuzzed."""
    operation = schemathesis.openapi.from_url(f"{api.url}/openapi.json")["/v1/jobs/{job_id}/predictions"]["POST"]
    dataset_id = upload(alice, dataset_zip).json()["id"]
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    path = f"/v1/jobs/{job_id}/predictions"
    with api.client() as anonymous:
        answers = [anonymous.post(path, files={"file": ("a.zip", b"PK")})]
    answers.append(alice.post("/v1/jobs/nope/predictions", files={"file": ("a.zip", b"PK")}))
    answers.append(alice.post(path, files={"file": ("a.zip", dataset_zip.read_bytes())}))  # the job is queued
    finish_job(settings, job_id, failed_image="img05")
    add_segmenter(settings, job_id)
    answers += [
        alice.post(path, data={"other": "x"}),
        alice.post(path, files={"file": ("a.zip", b"not a zip")}),
        alice.post(path, files={"images": ("a.zip", b"PK")}),
        alice.post(path, files={"file": ("notes.txt", b"no pixels")}),
        alice.post(path, files={"file": ("small.zip", dataset_zip.read_bytes())}),
    ]
    assert [answer.status_code for answer in answers] == [401, 404, 409, 415, 400, 422, 422, 201]
    assert answers[6].json()["problems"] == [{"file": "notes.txt", "line": None, "message": ANY}]
    for answer in answers:
        answer.request.read()
        operation.validate_response(answer)


def _listing_a_missing_image(dataset_zip) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(dataset_zip) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            extra = b"missing.png,square\n" if info.filename == "tags.csv" else b""
            target.writestr(info, source.read(info) + extra)
    return out.getvalue()

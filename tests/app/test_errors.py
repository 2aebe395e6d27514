"""Unexpected errors over real HTTP: a 500 naming an incident, logged with its traceback, on a connection
that stays open; and inputs that used to reach a 500 now get the 4xx that says what to fix."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import re
import zipfile
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from app.db import create_db_engine
from tests.app.service import upload, wait_for_dataset


@pytest.fixture
def dataset_id(alice, dataset_zip):
    response = upload(alice, dataset_zip)
    assert response.status_code == 200 and response.json()["state"] == "ready", response.text
    return response.json()["id"]


def _break_images_table(settings) -> None:
    """A fault no request can cause: the table a route reads is gone from under the running server."""
    engine = create_db_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE images RENAME TO images_elsewhere"))
    engine.dispose()


def test_an_unexpected_error_is_a_logged_500_and_the_connection_stays_open(api, settings, alice, dataset_id, caplog):
    _break_images_table(settings)
    key = alice.headers["Authorization"]
    connection = http.client.HTTPConnection(urlsplit(api.url).netloc, timeout=30)
    try:
        connection.request("GET", f"/v1/datasets/{dataset_id}/images", headers={"Authorization": key})
        socket_before = connection.sock
        failed = connection.getresponse()
        body = json.loads(failed.read())
        assert failed.status == 500 and failed.getheader("connection") != "close"
        assert re.fullmatch(r"internal error \(incident [0-9a-f]{12}\); the server log has the details", body["detail"])
        assert "images_elsewhere" not in json.dumps(body) and "Traceback" not in json.dumps(body)

        # The same keep-alive connection carries the next request (http.client would reconnect silently).
        connection.request("GET", f"/v1/datasets/{dataset_id}", headers={"Authorization": key})
        after = connection.getresponse()
        assert after.status == 200 and json.loads(after.read())["id"] == dataset_id
        assert connection.sock is socket_before
    finally:
        connection.close()

    incident = body["detail"].split("incident ")[1][:12]
    logged = [r for r in caplog.records if r.name == "pole.api" and incident in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "no such table: images" in str(logged[0].exc_info[1])


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", ["[1e400]", f"[{10**30}]", "[-1e400]", '["2020-01-01T00:00:00", 1e400]', "[NaN]"])
def test_forged_cursors_are_refused_with_400_on_every_paginated_route(alice, dataset_id, raw):
    job_id = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).json()["id"]
    for path in ("/v1/datasets", f"/v1/datasets/{dataset_id}/images", "/v1/jobs", f"/v1/jobs/{job_id}/selections"):
        response = alice.get(path, params={"cursor": _cursor(raw)})
        assert response.status_code == 400, (path, raw, response.text)
        assert "invalid cursor" in response.json()["detail"]


@pytest.mark.parametrize(
    ("config", "phrase"),
    [
        ({"seed": 10**30}, "seed: must be <= 4294967295"),
        ({"seed": -1}, "seed: must be >= 0"),
        ({"train_cam": {"epochs": 10**30}}, "train_cam.epochs"),
        ({"train_cam": {"lr": 1e400}}, "train_cam"),
    ],
)
def test_out_of_range_numbers_in_a_job_config_get_422(alice, dataset_id, config, phrase):
    # 1e400 is not JSON a client library writes, so the body is sent as the text a hostile client would.
    body = json.dumps({"dataset_id": dataset_id, "preset": "cpu-small", "config": config}).replace("Infinity", "1e400")
    response = alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert phrase in response.json()["detail"]
    assert alice.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize("path", ["/v1/jobs/%00", "/v1/datasets/abc%00def/images", "/v1/jobs?dataset_id=%00"])
def test_a_nul_character_in_the_url_is_refused_before_any_lookup(alice, path):
    response = alice.get(path)
    assert response.status_code == 400 and "NUL" in response.json()["detail"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_an_upload_with_damaged_compressed_data_is_refused_with_400(alice, compression):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        archive.writestr("images/a.png", bytes(range(256)) * 64)
    data = bytearray(buffer.getvalue())
    start = data.find(b"images/a.png") + len("images/a.png")
    data[start + 10 : start + 40] = b"\x00" * 30  # inside the compressed payload
    response = alice.post("/v1/datasets", files={"file": ("a.zip", bytes(data), "application/zip")})
    assert response.status_code == 202, response.text  # its listing is sound: the damage shows when extracting
    dataset = wait_for_dataset(alice, response.json()["id"]).json()
    assert dataset["state"] == "invalid" and "damaged" in dataset["problems"][0]["message"], dataset


def test_nul_characters_are_refused_before_postgresql_sees_them(tmp_path):
    """PostgreSQL stores no U+0000 in text or JSON: each of these was a 500 there, and is a 4xx now."""
    from tests.app.conftest import new_key
    from tests.app.service import (
        ApiServer,
        create_postgres_database,
        drop_postgres_database,
        make_dataset_zip,
        make_settings,
        small_dataset,
    )

    url = create_postgres_database()
    settings = make_settings(tmp_path / "data", database_url=url)
    try:
        with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as client:
            zip_path = make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")
            dataset_id = upload(client, zip_path).json()["id"]
            cursor = base64.urlsafe_b64encode(json.dumps(["2020-01-01T00:00:00", "a\u0000"]).encode()).decode()
            for path in ("/v1/jobs", "/v1/datasets"):
                assert client.get(path, params={"cursor": cursor}).status_code == 400
            for body in (
                {"dataset_id": "a\u0000"},
                {"dataset_id": dataset_id, "preset": "cpu-small", "synonyms": {"circle": ["di\u0000sc"]}},
                {"dataset_id": dataset_id, "preset": "cpu-small", "config": {"train_split": "a\u0000"}},
            ):
                refused = client.post("/v1/jobs", json=body)
                assert refused.status_code == 422 and "NUL" in refused.json()["detail"], refused.text
            # A raw NUL in the part header (httpx would percent-encode it): the name is only displayed.
            boundary = b"pole-boundary"
            body = (
                b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="we\x00ird\x07.zip"\r\n'
                b"Content-Type: application/zip\r\n\r\n" + zip_path.read_bytes() + b"\r\n--" + boundary + b"--\r\n"
            )
            named = client.post(
                "/v1/datasets",
                content=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"},
            )
            assert named.status_code == 202 and named.json()["name"] == "weird.zip", named.text
            assert wait_for_dataset(client, named.json()["id"]).json()["state"] == "ready"
    finally:
        drop_postgres_database(url)

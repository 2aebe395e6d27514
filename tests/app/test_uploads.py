"""POST /v1/datasets over real HTTP: 202 once on disk, then `validating` -> `ready` or `invalid` in the
background; a refused upload leaves nothing but its problems; jobs wait for `ready`; a validation cut
short by a restart is done again."""

from __future__ import annotations

import io
import stat
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from app import ingest
from app.db import create_db_engine
from app.models import Dataset
from app.models import Image as ImageRow
from app.upload_validation import UploadClaim
from tests.app.conftest import new_key
from tests.app.service import (
    ApiServer,
    data_dir_listing,
    dataset_routes,
    make_dataset_zip,
    make_settings,
    small_dataset,
    upload,
    wait_for_dataset,
)

MANY_IMAGES = 2000  # seconds of validation here: long enough to watch it move, to delete it or to stop it mid-way


def test_upload_answers_202_then_the_dataset_becomes_ready(alice, settings, dataset_zip):
    with open(dataset_zip, "rb") as f:
        accepted = alice.post("/v1/datasets", files={"file": ("small.zip", f, "application/zip")})
    assert accepted.status_code == 202, accepted.text
    first = accepted.json()
    assert first["state"] == "validating" and first["progress"] == 0.0 and first["problems"] is None
    assert first["image_count"] == 0 and first["classes"] == [] and first["size_bytes"] == dataset_zip.stat().st_size

    body = wait_for_dataset(alice, first["id"]).json()
    tags_csv = (dataset_zip.parent / "small" / "tags.csv").read_text().splitlines()[1:]
    tag_lists = [line.split(",")[1].split("|") for line in tags_csv]
    assert body["state"] == "ready" and body["progress"] == 1.0 and body["problems"] is None
    assert body["image_count"] == len(tags_csv)
    assert body["classes"] == ["square", "circle", "triangle"]
    assert body["tag_counts"] == {c: sum(c in tags for tags in tag_lists) for c in body["classes"]}
    assert body["gt_count"] == len(tags_csv)
    assert body["layout"] == "manifest"
    folder = settings.data_dir / "datasets" / body["id"]
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(line.split(",")[0] for line in tags_csv)
    assert body["size_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert list(settings.uploads_dir.iterdir()) == []  # the zip and the extraction are gone

    listed = alice.get("/v1/datasets").json()
    assert listed["items"] == [body] and listed["next_cursor"] is None
    assert alice.post("/v1/jobs", json={"dataset_id": body["id"], "preset": "cpu-small"}).status_code == 201


def test_images_are_paginated_by_cursor(alice, dataset_zip):
    dataset_id = upload(alice, dataset_zip).json()["id"]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = alice.get(f"/v1/datasets/{dataset_id}/images", params=params).json()
        seen += [image["id"] for image in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 2 and seen == [f"img{i:02d}" for i in range(6)]
    first = alice.get(f"/v1/datasets/{dataset_id}/images", params={"limit": 1}).json()["items"][0]
    assert first == {"id": "img00", "file": "images/img00.png", "tags": ["square"], "split": "train", "has_mask": True}
    bad = alice.get(f"/v1/datasets/{dataset_id}/images", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]


# --- the corpus of bad uploads ----------------------------------------------------------------------


def _zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _dataset_members(root: Path) -> list[tuple[str, bytes]]:
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def _png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _replace(members, name: str, data: bytes):
    return [(n, data if n == name else d) for n, d in members]


def _bad_uploads(valid: list[tuple[str, bytes]]) -> dict[str, tuple[bytes, str]]:
    """name -> (zip bytes, a phrase the refusal must contain)."""
    symlink = zipfile.ZipInfo("images/link.png")
    symlink.create_system = 3
    symlink.external_attr = (stat.S_IFLNK | 0o777) << 16
    jpeg = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(jpeg, "JPEG")
    tags = dict(valid)["tags.csv"].decode()
    return {
        "zip slip": (_zip([*valid, ("../../escaped.txt", b"x")]), "'..'"),
        "symlink": (_zip([*valid, (symlink, b"/etc/passwd")]), "symbolic link"),
        "bomb": (_zip([*valid, ("images/zeros.bin", b"\0" * (8 << 20))]), "compression bomb"),
        "too many members": (_zip([*valid, *((f"extra/{i}.txt", b"x") for i in range(250))]), "members"),
        "truncated jpeg": (
            _zip(
                [
                    *_replace(valid, "tags.csv", (tags + "cut.jpg,square\n").encode()),
                    ("images/cut.jpg", jpeg.getvalue()[: jpeg.tell() * 2 // 3]),
                ]
            ),
            "truncated",
        ),
        "huge pixel count": (_zip(_replace(valid, "images/img00.png", _huge_png_header())), "megapixels"),
        "non-image": (_zip(_replace(valid, "images/img01.png", b"just some text, not pixels")), "not a"),
        "wrong tags": (_zip(_replace(valid, "tags.csv", tags.replace("circle", "dragon").encode())), "dragon"),
        "empty zip": (_zip([]), "empty"),
        "not a zip": (b"PK but not really a zip file" * 10, "not a zip"),
    }


# Refused from the zip's listing alone, before the answer; the others are found by the background checks.
REFUSED_AT_ONCE = {"zip slip", "symlink", "too many members", "empty zip", "not a zip"}


def _counts(settings) -> tuple[int, int]:
    engine = create_db_engine(settings.database_url)
    with engine.connect() as conn:
        counts = (
            conn.scalar(select(func.count()).select_from(Dataset)),
            conn.scalar(select(func.count()).select_from(ImageRow)),
        )
    engine.dispose()
    return counts


def test_bad_uploads_are_refused_with_their_problems_and_leave_nothing_behind(alice, settings, tmp_path):
    valid = _dataset_members(small_dataset(tmp_path / "valid"))
    before_files = data_dir_listing(settings)
    before_datasets, before_images = _counts(settings)
    outcomes = {}
    for name, (content, phrase) in _bad_uploads(valid).items():
        response = alice.post("/v1/datasets", files={"file": (f"{name}.zip", content, "application/zip")})
        if response.status_code == 202:
            dataset = wait_for_dataset(alice, response.json()["id"]).json()
            assert dataset["state"] == "invalid" and dataset["progress"] == 1.0, (name, dataset)
            assert (dataset["image_count"], dataset["classes"], dataset["size_bytes"]) == (0, [], 0), name
            outcomes[name] = ("invalid", " ".join(f"{p['file']}: {p['message']}" for p in dataset["problems"]))
        else:
            outcomes[name] = (response.status_code, response.json()["detail"])
        assert phrase in outcomes[name][1], (name, outcomes[name])
        assert data_dir_listing(settings) == before_files, name
    refused_at_once = {name: status for name, (status, _) in outcomes.items() if status != "invalid"}
    assert refused_at_once == dict.fromkeys(REFUSED_AT_ONCE, 400)
    assert outcomes["bomb"][1].startswith("bomb.zip: archive refused")  # the zip itself is at fault
    # Of an upload refused in the background only the dataset row with its problems is kept, no image row.
    invalid = sum(status == "invalid" for status, _ in outcomes.values())
    assert _counts(settings) == (before_datasets + invalid, before_images)


def test_an_invalid_dataset_lists_every_problem_and_refuses_jobs(alice, bob, settings, tmp_path):
    root = small_dataset(tmp_path / "valid")
    tags = (root / "tags.csv").read_text()
    (root / "tags.csv").write_text(tags.replace("img02.png,triangle", "img02.png,dragon"))
    (root / "images" / "img04.png").write_bytes(b"not an image")
    dataset = upload(alice, make_dataset_zip(root, tmp_path / "bad.zip")).json()
    assert dataset["state"] == "invalid"
    lines = {(p["file"], p["line"]) for p in dataset["problems"]}
    assert ("tags.csv", 4) in lines and ("images/img04.png", None) in lines, dataset["problems"]

    job = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "cpu-small"})
    assert job.status_code == 409
    assert "is invalid" in job.json()["detail"] and f"GET /v1/datasets/{dataset['id']}" in job.json()["detail"]
    images = alice.get(f"/v1/datasets/{dataset['id']}/images")
    assert images.status_code == 409 and "is invalid" in images.json()["detail"]
    for method, path in dataset_routes(dataset["id"]):  # another key's, whatever its state
        assert bob.request(method, path).status_code == 404, (method, path)
    assert bob.get("/v1/datasets").json()["items"] == []
    assert alice.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert _counts(settings) == (0, 0)


def test_both_outcomes_are_recorded_on_each_database(backend, tmp_path, dataset_zip):
    with ApiServer(backend) as api, api.client(new_key(backend, "alice")) as alice:
        ready = upload(alice, dataset_zip).json()
        assert ready["state"] == "ready" and ready["image_count"] == 6
        images = alice.get(f"/v1/datasets/{ready['id']}/images", params={"limit": 10}).json()["items"]
        assert [image["id"] for image in images] == [f"img{i:02d}" for i in range(6)]
        root = small_dataset(tmp_path / "bad")
        (root / "tags.csv").write_text((root / "tags.csv").read_text().replace("img02.png,triangle", "img02.png,x"))
        invalid = upload(alice, make_dataset_zip(root, tmp_path / "bad.zip")).json()
        assert invalid["state"] == "invalid" and invalid["problems"][0]["file"] == "tags.csv", invalid
        assert alice.post("/v1/jobs", json={"dataset_id": invalid["id"], "preset": "cpu-small"}).status_code == 409
    assert _counts(backend) == (2, 6)


# --- large uploads: progress, cancelling, restarts ------------------------------------------------------


@pytest.fixture
def many_zip(tmp_path) -> Path:
    """MANY_IMAGES small images in the manifest layout, zipped without compression (PNGs do not shrink)."""
    pixels = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 140, 60)).save(pixels, "PNG")
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("classes.txt", "field\n")
        archive.writestr("tags.csv", "image,tags\n" + "".join(f"im{i:05d}.png,field\n" for i in range(MANY_IMAGES)))
        for index in range(MANY_IMAGES):
            archive.writestr(f"images/im{index:05d}.png", pixels.getvalue())
    return path


def post_zip(client, zip_path: Path) -> str:
    """POST the zip and check it was accepted for validation; returns the dataset's id."""
    with open(zip_path, "rb") as f:
        response = client.post("/v1/datasets", files={"file": (zip_path.name, f, "application/zip")})
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "validating"
    return response.json()["id"]


def states(settings) -> dict[str, tuple[str, float]]:
    engine = create_db_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(Dataset.id, Dataset.state, Dataset.progress))
        found = {row.id: (row.state, row.progress) for row in rows}
    engine.dispose()
    return found


@pytest.fixture
def frequent_progress(monkeypatch):
    """Progress written every 0.05 s, so that a validation of a second or two shows it moving here."""
    monkeypatch.setattr(ingest, "PROGRESS_INTERVAL_S", 0.05)


def settled_listing(settings) -> set[str]:
    """data_dir_listing, taken again while a folder vanishes under it."""
    while True:
        try:
            return data_dir_listing(settings)
        except FileNotFoundError:
            time.sleep(0.01)


def test_progress_moves_while_a_large_upload_is_validated_and_jobs_wait(tmp_path, many_zip, frequent_progress):
    settings = make_settings(tmp_path / "data")
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        started = time.monotonic()
        dataset_id = post_zip(alice, many_zip)
        answered_s = time.monotonic() - started
        job = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"})
        assert job.status_code == 409 and "still validating" in job.json()["detail"], job.text
        assert alice.get(f"/v1/datasets/{dataset_id}/images").status_code == 409
        seen = []
        deadline = time.monotonic() + 120
        while (dataset := alice.get(f"/v1/datasets/{dataset_id}").json())["state"] == "validating":
            seen.append(dataset["progress"])
            assert time.monotonic() < deadline, dataset
            time.sleep(0.05)
        validated_s = time.monotonic() - started
        assert dataset["state"] == "ready" and dataset["image_count"] == MANY_IMAGES
        assert seen == sorted(seen) and len({p for p in seen if 0 < p < 1}) >= 2, seen
        assert answered_s < validated_s / 2  # the request did not wait for the checks
        assert alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"}).status_code == 201
        assert list(settings.uploads_dir.iterdir()) == []


def test_deleting_a_dataset_being_validated_cancels_it_and_its_files_go(tmp_path, many_zip, frequent_progress):
    settings = make_settings(tmp_path / "data")  # one validation thread: the second upload waits its turn
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        before = data_dir_listing(settings)
        running, waiting = post_zip(alice, many_zip), post_zip(alice, many_zip)
        deadline = time.monotonic() + 60
        while alice.get(f"/v1/datasets/{running}").json()["progress"] == 0:
            assert time.monotonic() < deadline, "the validation never reported progress"
            time.sleep(0.05)
        for dataset_id in (waiting, running):
            assert alice.delete(f"/v1/datasets/{dataset_id}").status_code == 204
            assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 404
        while (left := settled_listing(settings)) != before:
            assert time.monotonic() < deadline, sorted(left - before)[:5]
            time.sleep(0.05)
        assert alice.get("/v1/datasets").json()["items"] == []
    assert _counts(settings) == (0, 0)


def test_uploads_waiting_for_their_validation_longer_than_the_max_age_are_kept(tmp_path, many_zip):
    # Sweeps every 0.1 s; the second upload waits seconds for the first one's validation.
    settings = make_settings(tmp_path / "data", upload_max_age_seconds=0.4)
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        first, second = post_zip(alice, many_zip), post_zip(alice, many_zip)
        for dataset_id in (first, second):
            dataset = wait_for_dataset(alice, dataset_id).json()
            assert dataset["state"] == "ready" and dataset["image_count"] == MANY_IMAGES, dataset["problems"]
        assert list(settings.uploads_dir.iterdir()) == []


def test_a_validation_cut_short_by_a_stop_is_done_again_at_the_next_start(tmp_path, many_zip):
    settings = make_settings(tmp_path / "data")
    with ApiServer(settings) as api, api.client(key := new_key(settings, "alice")) as alice:
        kept, lost = post_zip(alice, many_zip), post_zip(alice, many_zip)
    assert {state for state, _ in states(settings).values()} == {"validating"}  # stopped mid-way, zips kept
    (settings.uploads_dir / f"{lost}.zip").unlink()  # as a sweep removes a zip nobody kept fresh

    with ApiServer(settings) as api, api.client(key) as alice:
        ready = wait_for_dataset(alice, kept).json()
        assert ready["state"] == "ready" and ready["image_count"] == MANY_IMAGES
        invalid = wait_for_dataset(alice, lost).json()
        assert invalid["state"] == "invalid" and [p["message"] for p in invalid["problems"]] == [ingest.LOST]
        assert list(settings.uploads_dir.iterdir()) == []


def test_a_validation_another_live_process_holds_is_taken_over_only_once_it_dies(tmp_path, many_zip):
    # Sweeps, each after a search for orphaned validations, every second; an upload untouched for 4 s is
    # stale (room for a busy machine to delay the touches below).
    settings = make_settings(tmp_path / "data", upload_max_age_seconds=4.0)
    with ApiServer(settings) as api, api.client(key := new_key(settings, "alice")) as alice:
        dataset_id = post_zip(alice, many_zip)
    zip_path = settings.uploads_dir / f"{dataset_id}.zip"
    other_process = UploadClaim.take(zip_path)  # the lock a live API process validating it holds
    try:
        zip_path.touch()
        with ApiServer(settings) as api, api.client(key) as alice:
            for _ in range(30):  # three searches, while that process's sweeps keep its zip fresh
                zip_path.touch()
                time.sleep(0.1)
            assert states(settings)[dataset_id][0] == "validating" and zip_path.exists()
            other_process.release()  # as when that process dies
            ready = wait_for_dataset(alice, dataset_id, timeout=60).json()
            assert ready["state"] == "ready" and ready["image_count"] == MANY_IMAGES, ready["problems"]
    finally:
        other_process.release()


def test_oversized_upload_is_cut_off_with_413(alice, settings):
    body = b"\0" * (settings.max_upload_bytes + (1 << 20))
    before = data_dir_listing(settings)
    response = alice.post("/v1/datasets", files={"file": ("big.zip", body, "application/zip")})
    assert response.status_code == 413
    assert "POLE_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert data_dir_listing(settings) == before


def test_streamed_upload_without_length_is_cut_off_too(alice, settings):
    """A chunked body declares no size: the count while streaming is what refuses it."""
    boundary = "pole-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n\r\n'.encode()

    def body():
        yield head
        for _ in range(settings.max_upload_bytes // (256 << 10) + 2):
            yield b"\1" * (256 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    before = data_dir_listing(settings)
    response = alice.post(
        "/v1/datasets", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413
    assert data_dir_listing(settings) == before


@pytest.mark.parametrize(
    ("kwargs", "status", "phrase"),
    [
        ({"data": {"other": "x"}}, 415, "multipart/form-data"),
        ({"files": {"dataset": ("a.zip", b"PK", "application/zip")}}, 422, "field 'file'"),
    ],
)
def test_upload_without_the_file_field_says_how_to_send_it(alice, kwargs, status, phrase):
    response = alice.post("/v1/datasets", **kwargs)
    assert response.status_code == status and phrase in response.json()["detail"]

"""What an upload cut short leaves in the uploads folder goes (app/stale_uploads.py); an upload in progress
never does, however slow, and one whose validation a crash cut short is validated again. Real files, the
API over real HTTP, and `pole serve` killed with SIGKILL."""

from __future__ import annotations

import io
import os
import socket
import time
import zipfile
from pathlib import Path

from PIL import Image

from app.stale_uploads import UploadsInProgress, sweep_stale_uploads
from tests.app.conftest import new_key
from tests.app.service import ApiServer, ServeProcess, make_settings, wait_for_dataset

BOUNDARY = "pole-test-boundary"
HOUR = 3600


def aged(path: Path, seconds: float) -> Path:
    os.utime(path, (time.time() - seconds, time.time() - seconds), follow_symlinks=False)
    return path


def multipart(data: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after `data` in a multipart body with it as the field `file`."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_sweep_removes_old_entries_that_no_upload_in_progress_owns(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "a1.zip").write_bytes(b"partial")  # a body being received when its process died
    aged(uploads / "a1.zip", HOUR)
    staging = uploads / ".b2.d.x7k"  # safe_extract's staging folder, hundreds of files in real life
    (staging / "images").mkdir(parents=True)
    for index in range(50):
        (staging / "images" / f"{index}.png").write_bytes(b"png")
    aged(staging, HOUR)
    fresh = uploads / "c3.zip"
    fresh.write_bytes(b"arriving")
    in_progress = UploadsInProgress()
    slow = uploads / "d4.zip"  # a slow client's body, untouched by its writer for long
    slow.write_bytes(b"slow")
    aged(slow, HOUR)
    in_progress.add(slow)
    validating = uploads / "d4.d"  # the same upload's extraction, renamed from its staging folder
    validating.mkdir()
    aged(validating, HOUR)

    removed = sweep_stale_uploads(uploads, max_age_seconds=60, in_progress=in_progress)

    assert sorted(removed) == [".b2.d.x7k", "a1.zip"]
    assert sorted(p.name for p in uploads.iterdir()) == ["c3.zip", "d4.d", "d4.zip"]
    # Touched, so that the sweeps of other API processes on this data directory leave them too.
    assert time.time() - slow.stat().st_mtime < 60 and time.time() - validating.stat().st_mtime < 60
    in_progress.discard(slow)
    assert sweep_stale_uploads(uploads, max_age_seconds=HOUR / 2, in_progress=in_progress) == []


def test_an_upload_slower_than_the_max_age_is_kept_and_accepted(tmp_path, dataset_zip):
    # Sweeps every 0.1 s; the body then pauses for longer than the max age, twice.
    settings = make_settings(tmp_path / "data", upload_max_age_seconds=0.4)
    data = dataset_zip.read_bytes()
    head, tail = multipart(data)

    def slowly():
        yield head + data[: len(data) // 2]
        time.sleep(1.0)
        yield data[len(data) // 2 :]
        time.sleep(1.0)
        yield tail

    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        response = alice.post("/v1/datasets", content=slowly(), headers=headers)
        assert response.status_code == 202, response.text
        assert wait_for_dataset(alice, response.json()["id"]).json()["state"] == "ready"
        assert list(settings.uploads_dir.iterdir()) == []


def start_raw_upload(url: str, key: str, declared: int) -> socket.socket:
    """A POST /v1/datasets that declares `declared` body bytes and sends only the part headers."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head, _ = multipart(b"")
    sock.sendall(
        f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n".encode()
        + head
    )
    return sock


def test_kill_9_mid_upload_leaves_nothing_after_a_restart(tmp_path):
    settings = make_settings(tmp_path / "data", upload_max_age_seconds=1.0)
    serve = ServeProcess(settings, tmp_path / "serve.log", "--no-worker").start(ready="/healthz")
    try:
        key = new_key(settings, "alice")
        sock = start_raw_upload(serve.url, key, declared=50 << 20)
        sizes = []
        for _ in range(3):  # each pause longer than the max age: the sweeps must leave the body alone
            sock.sendall(os.urandom(256 << 10))
            time.sleep(1.5)
            [body] = settings.uploads_dir.iterdir()
            sizes.append(body.stat().st_size)
        assert sizes == sorted(sizes) and sizes[0] > 0 and body.suffix == ".zip"
        serve.kill()
        sock.close()
        assert body.exists()  # what the crash left

        time.sleep(1.5)  # older than the max age now
        serve = ServeProcess(settings, tmp_path / "serve.log", "--no-worker").start(ready="/healthz")
        assert list(settings.uploads_dir.iterdir()) == []  # gone before the API took its first request
        with serve.client(key) as alice:
            assert alice.get("/v1/datasets").json()["items"] == []
        assert list(settings.datasets_dir.iterdir()) == []
        assert "removed 1 unfinished upload(s)" in serve.log()
    finally:
        serve.stop()


def test_kill_9_mid_validation_is_validated_again_after_a_restart(tmp_path):
    archive = tmp_path / "many.zip"
    pixels = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 140, 60)).save(pixels, "PNG")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("classes.txt", "field\n")
        zf.writestr("tags.csv", "image,tags\n" + "".join(f"{index:05d}.png,field\n" for index in range(2000)))
        for index in range(2000):
            zf.writestr(f"images/{index:05d}.png", pixels.getvalue())
    settings = make_settings(tmp_path / "data", upload_max_age_seconds=1.0)
    serve = ServeProcess(settings, tmp_path / "serve.log", "--no-worker").start(ready="/healthz")
    try:
        key = new_key(settings, "alice")
        with open(archive, "rb") as f, serve.client(key) as client:
            accepted = client.post("/v1/datasets", files={"file": ("many.zip", f)})
        assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 30
        while not any(".d" in p.name for p in settings.uploads_dir.iterdir()):
            assert time.monotonic() < deadline, "the extraction was never seen"
            time.sleep(0.002)
        serve.kill()
        left = sorted(p.name for p in settings.uploads_dir.iterdir())
        assert f"{accepted.json()['id']}.zip" in left and any(".d" in name for name in left), left

        time.sleep(1.5)  # older than the max age now: only the search for orphans before the sweep saves the zip
        serve = ServeProcess(settings, tmp_path / "serve.log", "--no-worker").start(ready="/healthz")
        with serve.client(key) as alice:
            dataset = wait_for_dataset(alice, accepted.json()["id"]).json()
        assert dataset["state"] == "ready" and dataset["image_count"] == 2000, dataset["problems"]
        assert list(settings.uploads_dir.iterdir()) == []
        assert f"validating dataset {accepted.json()['id']} again" in serve.log(chars=None)
    finally:
        serve.stop()

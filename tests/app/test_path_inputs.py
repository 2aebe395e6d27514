"""Every user string that can reach a file path, over real HTTP: each hostile value gets a 4xx that says
why (never a 500), nothing outside the data directory is written, and no file's content comes back.

Beside the data directory sit a canary text file and a canary preset file; every answer is checked
for their secret, and the canaries and everything else outside the data directory for changes.

Where a user string meets the file system (app/ and ml/data, audited):
- a job's `preset` picks one of the shipped presets by name; no path is built from it;
- the archive's `format` must be one of the export formats pole knows (ml.spec.registry) before the
  run layout names a file; the model's is `pytorch` or `onnx`, and the run layout names its files;
- dataset, job, prediction run and image ids in the URL are looked up among the key's own rows before
  any path is built, and then only from the stored row (its server-made id and path);
- archive member names are checked by ml.data.archive before anything is written, for dataset and
  prediction uploads alike;
- a prediction upload of one image keeps its file name only when that is a plain file name
  (ml.data.loose_images.plain_file_name), and an image's id is the stem of a name checked so;
- tags.csv image names and VOC split-list ids are matched against the files of images/ and
  JPEGImages/, never joined onto a folder;
- tags.csv split values must be plain names (exports name a file after each split), VOC's are the
  names of its split-list files;
- the multipart filename is the dataset's display name only.
tests/app/test_uploads.py holds the plain zip-slip and symlink members; the members here extend it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import stat
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.db import create_db_engine
from app.models import Dataset, Job
from ml.spec.config import PRESETS_DIR
from tests.app.conftest import new_key
from tests.app.finished_job import add_segmenter, finish_job, run_queued_tasks
from tests.app.service import ApiServer, make_dataset_zip, make_settings, small_dataset, upload, wait_for_dataset

SECRET = f"CANARY-{uuid.uuid4().hex}"
PASSWD_LINE = "root:x:0:0"


class Live:
    """The server, its key, what the key owns, and the canaries outside the data directory."""

    def __init__(self, root: Path):
        self.root = root
        self.canary = root / "canary.txt"
        self.canary.write_text(SECRET)
        (root / "canary.json").write_text(json.dumps({"train_cam": {"epochs": 1}, "note": SECRET}))
        self.settings = make_settings(root / "data", max_upload_bytes=1 << 20, max_archive_members=100)
        folder = small_dataset(root / "small")
        self.members = [
            (p.relative_to(folder).as_posix(), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()
        ]
        self.zip_path = make_dataset_zip(folder, root / "small.zip")

    def serve(self, server: ApiServer) -> None:
        """Own a dataset, a succeeded job with a segmenter and a prediction run of it on `server`, then
        note everything outside the data directory."""
        self.server, self.key = server, new_key(self.settings, "paths")
        with server.client(self.key) as client:
            self.dataset_id = upload(client, self.zip_path).json()["id"]
            job = client.post("/v1/jobs", json={"dataset_id": self.dataset_id, "preset": "cpu-small"}).json()
            self.job_id = job["id"]
            finish_job(self.settings, self.job_id, failed_image="img05")
            add_segmenter(self.settings, self.job_id)
            images = {"file": ("img00.png", dict(self.members)["images/img00.png"])}
            self.prediction_id = client.post(f"/v1/jobs/{self.job_id}/predictions", files=images).json()["id"]
        run_queued_tasks(self.settings)
        self.outside = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, int, bytes]]:
        """Every file outside the data directory with its size, mtime and (for the canaries) content."""
        files = (p for p in self.root.rglob("*") if p.is_file() and self.settings.data_dir not in p.parents)
        return {
            str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if "canary" in p.name else b"")
            for p in files
        }

    def placeholders(self) -> dict[str, str]:
        return {
            "canary": str(self.canary),
            "canary_url": quote(str(self.canary), safe=""),
            "canary_preset": os.path.relpath(self.root / "canary", PRESETS_DIR),
            "canary_preset_file": str(self.root / "canary.json"),
            "job": self.job_id,
            "prediction": self.prediction_id,
        }

    def raw(self, method: str, target: str, body: bytes | None = None, headers: dict | None = None):
        """One request sent exactly as written (an HTTP client library would normalise '..' away)."""
        connection = http.client.HTTPConnection(urlsplit(self.server.url).netloc, timeout=60)
        try:
            connection.request(
                method, target, body=body, headers={"Authorization": f"Bearer {self.key}", **(headers or {})}
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def upload_bytes(self, content: bytes, filename: bytes = b"d.zip", path: str = "/v1/datasets"):
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="'
            + filename
            + b'"\r\n'
            + b"Content-Type: application/zip\r\n\r\n"
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.raw("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def counts(self) -> tuple[int, int]:
        engine = create_db_engine(self.settings.database_url)
        with engine.connect() as conn:
            counts = tuple(conn.scalar(select(func.count()).select_from(table)) for table in (Dataset, Job))
        engine.dispose()
        return counts

    def assert_refused(self, status: int, body: bytes, expected: set[int]) -> dict:
        """A 4xx among `expected`, saying why, echoing no file, with nothing outside the data directory touched."""
        assert status in expected and 400 <= status < 500, (status, body[:300])
        refusal = json.loads(body)
        assert isinstance(refusal["detail"], str) and refusal["detail"], body
        assert SECRET.encode() not in body and PASSWD_LINE.encode() not in body
        assert self.snapshot() == self.outside
        return refusal

    def assert_invalid(self, status: int, body: bytes) -> dict:
        """An upload accepted (202), then found invalid by the background checks, as assert_refused checks a 4xx."""
        assert status == 202, (status, body[:300])
        with self.server.client(self.key) as client:
            dataset = wait_for_dataset(client, json.loads(body)["id"]).json()
        assert dataset["state"] == "invalid" and dataset["problems"], dataset
        assert SECRET not in json.dumps(dataset) and PASSWD_LINE not in json.dumps(dataset)
        assert self.snapshot() == self.outside
        return dataset


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    live = Live(tmp_path_factory.mktemp("paths"))
    with ApiServer(live.settings) as server:
        live.serve(server)
        yield live


def _zip(members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


# --- job presets: a name, never a path -----------------------------------------------------------

PRESETS = {
    "traversal": "../../x",
    "absolute": "/etc/passwd",
    "overlong": "x" * 300,
    "nul byte": "cpu-small\x00",
    "url-encoded traversal": "..%2f..%2fcpu-small",
    "dot segment to a shipped preset": "cpu-small/../paper",
    "home": "~/canary",
    "traversal to the canary preset": "{canary_preset}",
    "absolute canary preset file": "{canary_preset_file}",
}


@pytest.mark.parametrize("template", PRESETS.values(), ids=PRESETS.keys())
def test_a_preset_is_a_name_never_a_path(live, template):
    before = live.counts()
    body = json.dumps({"dataset_id": live.dataset_id, "preset": template.format(**live.placeholders())})
    status, answer = live.raw("POST", "/v1/jobs", body.encode(), {"Content-Type": "application/json"})
    refusal = live.assert_refused(status, answer, {422})
    if "\x00" in template:  # refused with every other NUL in a job request, before any preset lookup
        assert "may not contain NUL" in refusal["detail"]
    else:
        assert refusal["detail"].startswith("config refused: unknown preset ")
        assert "available: cpu-small" in refusal["detail"]
    assert live.counts() == before


# --- ids in the URL: looked up among the key's own rows ---------------------------------------------

ROUTES = [
    ("GET", "/v1/datasets/{}"),
    ("GET", "/v1/datasets/{}/images"),
    ("DELETE", "/v1/datasets/{}"),
    ("GET", "/v1/jobs/{}"),
    ("POST", "/v1/jobs/{}/cancel"),
    ("GET", "/v1/jobs/{}/archive"),
    ("GET", "/v1/jobs/{}/images"),
    ("GET", "/v1/jobs/{job}/images/{}"),
    ("GET", "/v1/jobs/{job}/images/{}/mask.png"),
    ("GET", "/v1/jobs/{job}/images/{}/overlay.png"),
    ("GET", "/v1/jobs/{job}/images/{}/cams.png"),
    ("GET", "/v1/jobs/{}/model"),
    ("GET", "/v1/jobs/{}/predictions"),
    ("POST", "/v1/jobs/{}/predictions"),
    ("GET", "/v1/jobs/{job}/predictions/{}"),
    ("GET", "/v1/jobs/{job}/predictions/{}/archive"),
    ("GET", "/v1/jobs/{job}/predictions/{prediction}/images/{}/mask.png"),
    ("GET", "/v1/jobs/{job}/predictions/{prediction}/images/{}/overlay.png"),
]
IDS = {
    "dot dot": "..",
    "encoded dot dot": "%2e%2e",
    "encoded traversal": "%2e%2e%2f%2e%2e%2fcanary.txt",
    "half-encoded traversal": "..%2F..%2F..%2F..%2Fcanary.txt",
    "encoded backslashes": "%5c..%5c..%5ccanary.txt",
    "encoded absolute canary": "{canary_url}",
    "absolute": "/etc/passwd",
    "overlong": "a" * 300,
    "nul": "%00",
    "nul after an existing image": "img00%00",
}


@pytest.mark.parametrize("value", IDS.values(), ids=IDS.keys())
@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m} {r}" for m, r in ROUTES])
def test_ids_in_the_url_name_rows_never_files(live, method, route, value):
    placeholders = live.placeholders()
    target = route.replace("{job}", placeholders["job"]).replace("{prediction}", placeholders["prediction"])
    target = target.replace("{}", value.format(**placeholders))
    live.assert_refused(*live.raw(method, target), {400, 404})


FORMATS = ["../../../canary", "/etc/passwd", "..%2f..%2fcanary", "cvat%00", "cvat/../cvat", "x" * 41]


@pytest.mark.parametrize("value", FORMATS)
def test_the_archive_format_is_a_name_pole_knows_never_a_path(live, value):
    for archive in (f"/v1/jobs/{live.job_id}", f"/v1/jobs/{live.job_id}/predictions/{live.prediction_id}"):
        live.assert_refused(*live.raw("GET", f"{archive}/archive?format={value}"), {400, 404, 422})


@pytest.mark.parametrize("value", [*FORMATS, "onnx/../pytorch"])
def test_the_model_format_is_one_of_its_names_never_a_path(live, value):
    live.assert_refused(*live.raw("GET", f"/v1/jobs/{live.job_id}/model?format={value}"), {400, 422})


# --- what an uploaded archive names --------------------------------------------------------------

MEMBERS = {
    "absolute canary": lambda live: (str(live.canary), b"x"),
    "traversal after a folder": lambda live: ("images/../../canary.txt", b"x"),
    "dot then traversal": lambda live: ("./../canary.txt", b"x"),
    "backslash traversal": lambda live: ("..\\..\\canary.txt", b"x"),
    "drive letter": lambda live: ("C:/canary.txt", b"x"),
    "control character": lambda live: ("images/img\x01.png", b"x"),
    "overlong name": lambda live: ("images/" + "a" * 300 + ".png", b"x"),
    "symlinked folder": lambda live: _symlink("images/more/", str(live.root)),
}


@pytest.mark.parametrize("member", MEMBERS.values(), ids=MEMBERS.keys())
def test_hostile_archive_members_are_refused(live, member):
    content = _zip([*live.members, member(live)])
    for path in ("/v1/datasets", f"/v1/jobs/{live.job_id}/predictions"):
        refusal = live.assert_refused(*live.upload_bytes(content, path=path), {400})
        assert refusal["detail"].startswith("archive refused: "), path
        assert list(live.settings.uploads_dir.iterdir()) == []


def test_a_member_name_that_is_not_the_utf8_it_claims_is_refused(live):
    data = bytearray(_zip([*live.members, ("images/NAME.png", b"x")]).replace(b"NAME", b"\xff\xfe\xfd\xfc"))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            data[at + flags_at + 1] |= 0x08  # bit 11 of the little-endian flags: names are UTF-8
            at = data.find(signature, at + 4)
    refusal = live.assert_refused(*live.upload_bytes(bytes(data)), {400})
    assert refusal["detail"] == "archive refused: a member name is marked as UTF-8 but is not; re-create the zip"


TAGGED_NAMES = ["../canary.txt", "../../canary.txt", "{canary}", "images/../../canary.txt", "..", "..\\canary.txt"]


@pytest.mark.parametrize("name", TAGGED_NAMES)
def test_image_names_in_tags_csv_are_file_names_inside_images(live, name):
    name = name.format(**live.placeholders())
    members = [(n, d + f"{name},square\n".encode() if n == "tags.csv" else d) for n, d in live.members]
    refusal = live.assert_invalid(*live.upload_bytes(_zip(members)))
    assert any(p["file"] == "tags.csv" and repr(name) in p["message"] for p in refusal["problems"]), refusal


@pytest.mark.parametrize("entry", ["../../canary", "{canary}", "..", "JPEGImages/../../canary"])
def test_ids_in_voc_split_lists_are_matched_never_joined(live, entry):
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(jpeg, "JPEG")
    xml = b"<annotation><object><name>cat</name></object></annotation>"
    listed = f"a\n{entry.format(**live.placeholders())}\n".encode()
    voc = [
        ("JPEGImages/a.jpg", jpeg.getvalue()),
        ("Annotations/a.xml", xml),
        ("ImageSets/Segmentation/train.txt", listed),
    ]
    refusal = live.assert_invalid(*live.upload_bytes(_zip(voc)))
    assert [(p["file"], p["line"]) for p in refusal["problems"]] == [("ImageSets/Segmentation/train.txt", 2)]


FILENAMES = [b"../../canary.txt", b"/etc/passwd", b"..\\..\\canary.txt", b"a\x00b.zip", b"x" * 300, b"%2e%2e%2fcanary"]


@pytest.mark.parametrize("filename", FILENAMES)
def test_the_upload_filename_of_a_refused_archive_changes_nothing(live, filename):
    before = live.counts()
    refusal = live.assert_refused(*live.upload_bytes(b"not a zip", filename), {400})
    assert refusal["detail"].startswith("archive refused: not a zip")
    assert live.counts() == before


def test_the_upload_filename_is_only_a_display_name(live):
    name = "../../" + str(live.canary).lstrip("/") + "x" * 300
    status, answer = live.upload_bytes(live.zip_path.read_bytes(), name.encode())
    assert status == 202, answer
    with live.server.client(live.key) as client:
        dataset = wait_for_dataset(client, json.loads(answer)["id"]).json()
    assert dataset["name"] == name[:255] and dataset["state"] == "ready"
    assert (live.settings.datasets_dir / dataset["id"] / "tags.csv").is_file()
    assert live.snapshot() == live.outside


LONE_NAMES = {  # the multipart file name -> the name the image is kept under
    b"../../canary.txt": "canary.txt",
    b"/etc/passwd": "passwd",
    b"..\\..\\canary.png": "canary.png",
    b".hidden.png": "image",
    b"x" * 300 + b".png": "x" * 255,  # the display name is cut to 255 characters first
}


@pytest.mark.parametrize(("filename", "kept"), LONE_NAMES.items())
def test_a_lone_images_file_name_is_kept_only_as_a_plain_name(live, filename, kept):
    image = dict(live.members)["images/img00.png"]
    status, answer = live.upload_bytes(image, filename, path=f"/v1/jobs/{live.job_id}/predictions")
    assert status == 201, answer
    inputs = live.settings.predictions_dir / json.loads(answer)["id"] / "inputs"
    assert [path.name for path in inputs.iterdir()] == [kept]
    assert live.snapshot() == live.outside

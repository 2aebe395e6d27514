"""POST /v1/datasets over real HTTP: a good upload is kept whole, every bad one leaves nothing behind."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.db import create_db_engine
from app.models import Dataset
from app.models import Image as ImageRow
from tests.app.service import data_dir_listing, make_dataset_zip, small_dataset, upload


def test_upload_reports_the_dataset_and_keeps_it(alice, settings, dataset_zip):
    response = upload(alice, dataset_zip)
    assert response.status_code == 201, response.text
    body = response.json()
    tags_csv = (dataset_zip.parent / "small" / "tags.csv").read_text().splitlines()[1:]
    tag_lists = [line.split(",")[1].split("|") for line in tags_csv]
    assert body["image_count"] == len(tags_csv)
    assert body["classes"] == ["square", "circle", "triangle"]
    assert body["tag_counts"] == {c: sum(c in tags for tags in tag_lists) for c in body["classes"]}
    assert body["gt_count"] == len(tags_csv)
    assert body["layout"] == "manifest"
    folder = settings.data_dir / "datasets" / body["id"]
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(line.split(",")[0] for line in tags_csv)
    assert list(settings.uploads_dir.iterdir()) == []  # the request body and staging folder are gone

    assert alice.get(f"/v1/datasets/{body['id']}").json() == body
    listed = alice.get("/v1/datasets").json()
    assert [d["id"] for d in listed["items"]] == [body["id"]] and listed["next_cursor"] is None


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


def test_bad_uploads_are_refused_and_leave_nothing_behind(alice, settings, tmp_path):
    valid = _dataset_members(small_dataset(tmp_path / "valid"))
    engine = create_db_engine(settings.database_url)
    before_files = data_dir_listing(settings)
    with engine.connect() as conn:
        before_rows = (
            conn.scalar(select(func.count()).select_from(Dataset)),
            conn.scalar(select(func.count()).select_from(ImageRow)),
        )
    refusals = {}
    for name, (content, phrase) in _bad_uploads(valid).items():
        response = alice.post("/v1/datasets", files={"file": (f"{name}.zip", content, "application/zip")})
        refusals[name] = (response.status_code, response.json()["detail"])
        assert 400 <= response.status_code < 500, (name, response.text)
        assert phrase in response.json()["detail"], (name, response.json())
        assert data_dir_listing(settings) == before_files, name
    with engine.connect() as conn:
        after_rows = (
            conn.scalar(select(func.count()).select_from(Dataset)),
            conn.scalar(select(func.count()).select_from(ImageRow)),
        )
    engine.dispose()
    assert after_rows == before_rows
    # Dataset problems come as a list a client can show next to the files.
    assert refusals["wrong tags"][0] == 422
    assert refusals["zip slip"][0] == 400


def test_dataset_problems_are_listed_with_file_and_line(alice, tmp_path):
    root = small_dataset(tmp_path / "valid")
    (root / "tags.csv").write_text((root / "tags.csv").read_text().replace("img02.png,triangle", "img02.png,dragon"))
    response = upload(alice, make_dataset_zip(root, tmp_path / "bad.zip"))
    assert response.status_code == 422
    assert {k: response.json()["problems"][0][k] for k in ("file", "line")} == {"file": "tags.csv", "line": 4}


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

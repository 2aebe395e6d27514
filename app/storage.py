"""Where things live in the data directory, and how an upload gets there.

    <data dir>/uploads/   request bodies being received and archives being validated (transient)
    <data dir>/datasets/<dataset id>/   an accepted dataset, extracted
    <data dir>/jobs/<job id>/           the job's run directory (its files: ml.spec.layout)
    <data dir>/predictions/<run id>/    a prediction run's folder (its files: ml.spec.layout.PredictionLayout)

Rows store paths relative to the data directory, so workers may mount it elsewhere.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import ApiError
from app.settings import Settings
from app.stale_uploads import UPLOADS_IN_PROGRESS
from ml.spec.layout import PredictionLayout, RunLayout

MULTIPART_OVERHEAD = 64 << 10  # boundaries and part headers around the file itself


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def dataset_dir(settings: Settings, relative: str) -> Path:
    return settings.data_dir / relative


def run_layout(settings: Settings, job_id: str) -> RunLayout:
    return RunLayout(job_dir(settings, job_id))


def prediction_dir(settings: Settings, prediction_id: str) -> Path:
    return settings.predictions_dir / prediction_id


def prediction_layout(settings: Settings, prediction_id: str) -> PredictionLayout:
    return PredictionLayout(prediction_dir(settings, prediction_id))


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    UPLOADS_IN_PROGRESS.discard(path)


def new_upload_path(settings: Settings, suffix: str = "", upload_id: str | None = None) -> Path:
    """A new path in the uploads folder, in progress (kept from the stale-upload sweeps) until `remove_path`
    removes it or `upload_done` says it was moved away. Named after `upload_id` (a fresh one if None)."""
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    path = settings.uploads_dir / f"{upload_id or uuid.uuid4().hex}{suffix}"
    UPLOADS_IN_PROGRESS.add(path)
    return path


def upload_done(path: Path) -> None:
    UPLOADS_IN_PROGRESS.discard(path)


async def receive_file(
    request: Request, dest: Path, max_bytes: int, field: str = "file", what: str = "the dataset .zip"
) -> str:
    """Stream the multipart field `field` of the request body into `dest`; returns the client's file name.

    Bytes are counted as they arrive and the transfer is refused (413) as soon as the file passes
    `max_bytes`, so an oversized body never fills the disk. `dest` is removed on any refusal. `what`
    names the file expected, in the refusals.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, f"send {what} as multipart/form-data in the field {field!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise ApiError(413, _too_large(max_bytes))
    receiver = _FileReceiver(dest, field, max_bytes)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        receiver.close()
        remove_path(dest)
        raise
    except Exception as err:  # the multipart parser's own errors, plus a client that hung up mid-body
        receiver.close()
        remove_path(dest)
        raise ApiError(400, f"could not read the multipart body ({err}); send {what} as the field {field!r}") from err
    receiver.close()
    if receiver.filename is None:
        remove_path(dest)
        raise ApiError(422, f"no file in the multipart field {field!r}; send {what} there")
    return receiver.filename


def _too_large(max_bytes: int) -> str:
    return (
        f"upload is larger than the limit of {max_bytes} bytes; split it into smaller uploads "
        "or raise POLE_MAX_UPLOAD_BYTES on the server"
    )


class _FileReceiver:
    """multipart callbacks that write one named part to disk, counting its bytes."""

    def __init__(self, dest: Path, field: str, max_bytes: int):
        self.dest, self.field, self.max_bytes = dest, field, max_bytes
        self.filename: str | None = None
        self.written = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._out = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_header_name", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        if params.get(b"name", b"").decode() != self.field or self._out is not None or self.filename is not None:
            return  # other fields, and any second file under the same name, are skipped
        # A display name only (never a path); control characters could not be stored or shown.
        name = params.get(b"filename", b"upload.zip").decode(errors="replace")
        self.filename = "".join(c for c in name if c.isprintable())[:255] or "upload.zip"
        self._out = open(self.dest, "xb")  # noqa: SIM115 (closed in _part_end or close)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self.written += end - start
        if self.written > self.max_bytes:
            raise ApiError(413, _too_large(self.max_bytes))
        self._out.write(data[start:end])

    def _part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

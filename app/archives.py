"""A succeeded job's mask archive, or a succeeded prediction run's, in any export format pole knows.

The formats of the job's `export.formats` are in its run directory when it succeeds (a prediction
run writes the first of its job's). Any other is built once, on the first request for it, by a
worker from the finished run (the API runs no ML code): that request queues the build and is
answered 202, as is every request until the zip is in place; from then on the zip is served like
the others. The run's folder keeps the state between requests: `<format>.requested` while a build
is queued or running, `<format>.failed` with the reason when it failed (ml.spec.layout). A job's
segmenter exported to ONNX is built the same way (`queue_build`, app.model_service).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from celery import Celery
from fastapi.responses import FileResponse, JSONResponse, Response
from kombu.exceptions import OperationalError as BrokerUnreachable

from app.errors import ApiError
from app.models import Job, PredictionRun
from app.queue import send_build_archive, send_build_prediction_archive
from app.settings import Settings
from app.storage import prediction_layout, run_layout
from ml.spec.config import config_from_dict
from ml.spec.layout import ExportFiles
from ml.spec.registry import EXPORT_FORMATS

log = logging.getLogger("pole.api")

RETRY_AFTER_SECONDS = 5  # how long a client waits before asking again for a file being built
# A build asked for this long ago is asked for again: the worker that took it may have died with it.
# One that is only waiting behind a long job then runs a second time, and finds the zip there.
RESEND_AFTER_SECONDS = 600


def pending_response(detail: str) -> JSONResponse:
    """The answer while a worker builds the file asked for: 202, and when to ask again."""
    return JSONResponse({"detail": detail}, status_code=202, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@dataclass(frozen=True)
class Archive:
    format: str
    path: Path | None  # None while a worker builds it
    download_name: str


def archive_response(archive: Archive, built_from: str) -> Response:
    """The zip, or 202 while a worker builds it from `built_from` ("this job's run", say)."""
    if archive.path is None:
        return pending_response(
            f"the {archive.format} archive is being built from {built_from}; ask again in a few seconds"
        )
    return FileResponse(archive.path, media_type="application/zip", filename=archive.download_name)


def job_archive(settings: Settings, celery: Celery, job: Job, asked: str | None) -> Archive:
    """The archive of a succeeded job in format `asked` (default: the first the job exported),
    queueing its build when the job did not export it. Refusals are ApiErrors."""
    exported = config_from_dict(job.config).export.formats
    name = _known_format(asked or exported[0])
    layout = run_layout(settings, job.id)
    suffix = "" if name == exported[0] else f"_{name}"
    archive = Archive(name, layout.archive(name), f"pole_masks_{job.id}{suffix}.zip")
    if archive.path.is_file():
        return archive
    if name in exported or not layout.stage_done("export"):
        raise ApiError(410, "the archive file is missing from the data directory; run the job again")
    return _build_on_demand(archive, layout, "this job's run", partial(send_build_archive, celery, job.id, name))


def prediction_format(run: PredictionRun) -> str:
    """The format a prediction run writes its archive in: the first of its job's export formats."""
    return config_from_dict(run.job.config).export.formats[0]


def prediction_archive(settings: Settings, celery: Celery, run: PredictionRun, asked: str | None) -> Archive:
    """The archive of a succeeded prediction run in format `asked` (default: the one it wrote), queueing
    its build when the run did not write it. Refusals are ApiErrors."""
    written = prediction_format(run)
    name = _known_format(asked or written)
    layout = prediction_layout(settings, run.id)
    suffix = "" if name == written else f"_{name}"
    archive = Archive(name, layout.archive(name), f"pole_predictions_{run.id}{suffix}.zip")
    if archive.path.is_file():
        return archive
    if name == written:
        raise ApiError(410, "the archive file is missing from the data directory; upload the images again")
    send = partial(send_build_prediction_archive, celery, run.id, name)
    return _build_on_demand(archive, layout, "this prediction run", send)


def _known_format(name: str) -> str:
    if name not in EXPORT_FORMATS:
        raise ApiError(404, f"no export format {name[:40]!r}; formats pole knows: {', '.join(EXPORT_FORMATS)}")
    return name


def _build_on_demand(archive: Archive, layout: ExportFiles, source: str, send: Callable[[], None]) -> Archive:
    """`archive` while a worker builds it from `source` (see `queue_build`)."""
    name = archive.format
    queue_build(f"the {name} archive from {source}", layout.archive_request(name), layout.archive_failure(name), send)
    return replace(archive, path=None)


def queue_build(what: str, request: Path, failure: Path, send: Callable[[], None]) -> None:
    """Have a worker build `what`, a file not there yet, with `send`, unless it was asked for lately.
    `request` marks the build as queued until the worker removes it; `failure`, which the worker
    writes, turns every later request into a 410 with its reason."""
    if failure.is_file():
        raise ApiError(410, f"building {what} failed: {failure.read_text(errors='replace')}")
    if not request.is_file() or time.time() - request.stat().st_mtime > RESEND_AFTER_SECONDS:
        request.touch()  # before sending: the worker removes it when done, however fast that is
        try:
            send()
        except BrokerUnreachable as err:
            request.unlink(missing_ok=True)
            log.error("could not enqueue building %s: %s", what, err)
            raise ApiError(503, f"the job queue is unreachable right now; ask for {what} again later") from err

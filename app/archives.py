"""A succeeded job's mask archive, in any export format pole knows.

The formats of the job's `export.formats` are in its run directory when it succeeds. Any other is
built once, on the first request for it, by a worker from the finished run (the API runs no ML
code): that request queues the build and is answered 202, as is every request until the zip is in
place; from then on the zip is served like the others. The run directory keeps the state between
requests: `<format>.requested` while a build is queued or running, `<format>.failed` with the reason
when it failed (ml.spec.layout).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from celery import Celery
from kombu.exceptions import OperationalError as BrokerUnreachable

from app.errors import ApiError
from app.models import Job
from app.queue import send_build_archive
from app.settings import Settings
from app.storage import run_layout
from ml.spec.config import config_from_dict
from ml.spec.registry import EXPORT_FORMATS

log = logging.getLogger("pole.api")

RETRY_AFTER_SECONDS = 5  # how long a client waits before asking again for an archive being built
# A build asked for this long ago is asked for again: the worker that took it may have died with it.
# One that is only waiting behind a long job then runs a second time, and finds the zip there.
RESEND_AFTER_SECONDS = 600


@dataclass(frozen=True)
class JobArchive:
    format: str
    path: Path | None  # None while a worker builds it
    download_name: str


def job_archive(settings: Settings, celery: Celery, job: Job, asked: str | None) -> JobArchive:
    """The archive of a succeeded job in format `asked` (default: the first the job exported),
    queueing its build when the job did not export it. Refusals are ApiErrors."""
    exported = config_from_dict(job.config).export.formats
    name = asked or exported[0]
    if name not in EXPORT_FORMATS:
        raise ApiError(404, f"no export format {name[:40]!r}; formats pole knows: {', '.join(EXPORT_FORMATS)}")
    layout = run_layout(settings, job.id)
    suffix = "" if name == exported[0] else f"_{name}"
    archive = JobArchive(name, layout.archive(name), f"pole_masks_{job.id}{suffix}.zip")
    if archive.path.is_file():
        return archive
    if name in exported or not layout.stage_done("export"):
        raise ApiError(410, "the archive file is missing from the data directory; run the job again")
    if layout.archive_failure(name).is_file():
        reason = layout.archive_failure(name).read_text(errors="replace")
        raise ApiError(410, f"building the {name} archive from this job's run failed: {reason}")
    request = layout.archive_request(name)
    if not request.is_file() or time.time() - request.stat().st_mtime > RESEND_AFTER_SECONDS:
        request.touch()  # before sending: the worker removes it when done, however fast that is
        try:
            send_build_archive(celery, job.id, name)
        except BrokerUnreachable as err:
            request.unlink(missing_ok=True)
            log.error("could not enqueue the %s archive of job %s: %s", name, job.id, err)
            raise ApiError(503, "the job queue is unreachable right now; ask for the archive again later") from err
    return replace(archive, path=None)

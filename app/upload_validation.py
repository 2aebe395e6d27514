"""Uploads validated in the background, on the API process's own threads, and never left `validating`.

Why the API and not a Celery worker: a worker runs one job at a time (one per GPU, `--concurrency 1`)
and a job trains for hours, so a validation queued behind it would keep its dataset `validating` as
long; and an API started without workers (`pole serve --no-worker`) could then accept no dataset. The
checks need no torch, only ml.data, which the API imports anyway. `POLE_VALIDATION_THREADS` uploads are
checked at once (each decodes its images on a few threads of its own); the others wait their turn in
`validating` at progress 0, as a zip on disk (capped by POLE_MAX_UPLOAD_BYTES) and an open file, so
waiting costs no memory of note and no request is held while they wait.

Never stuck: the process that accepted an upload holds an exclusive lock (flock) on its zip until the
dataset is `ready` or `invalid`. The kernel drops the lock when the process dies, however it dies, so
any API process that can lock the zip of a dataset still `validating` knows its validator is gone and
validates it again: at its start, and before each stale-upload sweep (app/stale_uploads.py). A dataset
whose zip is gone becomes `invalid` with a problem that says to upload it again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.ingest import accept_upload, record_lost, upload_zip, validate_upload
from app.models import Dataset
from app.settings import Settings
from app.stale_uploads import UPLOADS_IN_PROGRESS

log = logging.getLogger("pole.uploads")


class UploadClaim:
    """An exclusive flock on an upload's zip: whoever holds it validates that upload."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path) -> UploadClaim | None:
        """The claim on `path`, or None while another holds it; FileNotFoundError once the zip is gone."""
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class UploadValidations:
    """This API process's validation threads, and its search for validations that a dead process left."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.settings, self.sessions = settings, sessions
        self._pool = ThreadPoolExecutor(settings.validation_threads, thread_name_prefix="pole-validate")
        self._stopping = threading.Event()

    def accept(self, session: Session, *, dataset_id: str, owner_id: int, name: str) -> Dataset:
        """Store the zip just received for `dataset_id` as a `validating` dataset and queue its validation.
        Raises ApiError (nothing stored) for an archive refused from its listing."""
        claim = UploadClaim.take(upload_zip(self.settings, dataset_id))  # a new file: nobody else holds it
        try:
            # Claimed before the row exists: no other process may take this upload for an orphan.
            dataset = accept_upload(session, self.settings, dataset_id=dataset_id, owner_id=owner_id, name=name)
        except BaseException:
            claim.release()
            raise
        self._submit(dataset_id, claim)
        return dataset

    def adopt_orphans(self) -> None:
        """Validate again each `validating` dataset no live process holds; a lost upload becomes `invalid`."""
        with self.sessions() as session:
            validating = list(session.scalars(select(Dataset.id).where(Dataset.state == "validating")))
        for dataset_id in validating:
            path = upload_zip(self.settings, dataset_id)
            try:
                claim = UploadClaim.take(path)
            except FileNotFoundError:
                with self.sessions() as session:
                    if record_lost(session, dataset_id):
                        log.warning("dataset %s was left validating and its upload is gone: now invalid", dataset_id)
                continue
            if claim is None:  # a live process is validating it
                continue
            with self.sessions() as session:  # a new transaction: it sees what committed before our claim
                state = session.scalar(select(Dataset.state).where(Dataset.id == dataset_id))
            if state != "validating":  # it ended between our query and our claim
                claim.release()
                continue
            log.info("validating dataset %s again: the process that accepted it stopped before it ended", dataset_id)
            UPLOADS_IN_PROGRESS.add(path)
            self._submit(dataset_id, claim)

    def stop(self) -> None:
        """Interrupt the validation under way (its dataset stays `validating`, for the next start) and end."""
        self._stopping.set()
        self._pool.shutdown(wait=True)

    def _submit(self, dataset_id: str, claim: UploadClaim) -> None:
        try:
            self._pool.submit(self._validate, dataset_id, claim)
        except RuntimeError:  # stopping: the next start validates it
            claim.release()

    def _validate(self, dataset_id: str, claim: UploadClaim) -> None:
        try:
            if not self._stopping.is_set():
                validate_upload(self.sessions, self.settings, dataset_id, self._stopping.is_set)
        except Exception:  # the outcome could not be recorded (the database is down?): a later sweep retries
            log.exception("could not record the validation of dataset %s", dataset_id)
        finally:
            claim.release()  # only once the outcome is committed: see the module docstring

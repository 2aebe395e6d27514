"""Accepting a dataset upload: the cheap checks at once, the full ones in the background, nothing kept on refusal.

`accept_upload` (in the request, on the zip just received) checks what the zip's listing alone tells
(`ml.data.archive.check_archive`: names, kinds, member count, declared sizes) and writes the dataset
row in `validating`. `validate_upload` (later, on a validation thread: app/upload_validation.py)
extracts the archive with `safe_extract` (sizes and compression ratio measured while extracting) and
reads it with `ml.data.readers.read_dataset`, which decodes every image with the checks the pipeline
uses. The dataset then becomes `ready`, its folder moved into place and its image rows written in the
same transaction as the state, or `invalid` with every problem listed and no file kept.

The zip waits in the uploads folder, named after the dataset, until its validation has ended: a
dataset still `validating` after a crash is found again by that name.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert, update
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ApiError
from app.models import Dataset, Image
from app.settings import Settings
from app.storage import remove_path, upload_done
from ml.data import DatasetError
from ml.data.archive import ArchiveError, check_archive, safe_extract
from ml.data.readers import read_dataset

log = logging.getLogger("pole.uploads")

# Extraction and decoding took about as long as each other for small images (bench/upload_validation.py).
EXTRACT_SHARE = 0.5
PROGRESS_INTERVAL_S = 0.5  # how often a validation writes its progress (and notices a DELETE)
LOST = (
    "the upload was lost before it could be checked (the server stopped while it was being validated, "
    "and its file is gone); upload the dataset again"
)


class ValidationCancelled(Exception):
    """The dataset was deleted while it was being validated."""


class ValidationInterrupted(Exception):
    """The API is stopping: the dataset stays `validating`, its zip kept, for the next start to validate."""


def upload_zip(settings: Settings, dataset_id: str) -> Path:
    return settings.uploads_dir / f"{dataset_id}.zip"


def accept_upload(session: Session, settings: Settings, *, dataset_id: str, owner_id: int, name: str) -> Dataset:
    """Check the listing of the zip received for `dataset_id` and store the dataset as `validating`.

    Raises ApiError 400 for an archive refused from its listing; the zip is then the caller's to remove.
    """
    upload = upload_zip(settings, dataset_id)
    try:
        check_archive(upload, settings.archive_limits())
    except ArchiveError as err:
        raise ApiError(400, f"archive refused: {err}") from err
    row = Dataset(
        id=dataset_id,
        owner_id=owner_id,
        name=name[:255],
        path=str(settings.datasets_dir.joinpath(dataset_id).relative_to(settings.data_dir)),
        layout="",
        classes=[],
        image_count=0,
        tag_counts={},
        gt_count=0,
        size_bytes=upload.stat().st_size,
        state="validating",
        progress=0.0,
    )
    session.add(row)
    session.commit()
    return row


def validate_upload(
    sessions: sessionmaker[Session], settings: Settings, dataset_id: str, stopping: Callable[[], bool]
) -> None:
    """Check the upload of a `validating` dataset whole and record the outcome: `ready` or `invalid`.

    Whatever happens the dataset leaves `validating`, except when `stopping()` turns true (the API is
    stopping; the zip stays for the next start). A dataset deleted meanwhile is cancelled: its files go.
    """
    upload = upload_zip(settings, dataset_id)
    staging = settings.uploads_dir / f"{dataset_id}.d"
    with sessions() as session:
        row = session.get(Dataset, dataset_id)
        if row is None or row.state != "validating":
            remove_path(upload)
            return
        name = row.name
    _remove_leftovers(settings, dataset_id)
    progress = _ProgressWriter(sessions, dataset_id, stopping)
    try:
        try:
            safe_extract(upload, staging, settings.archive_limits(), progress.part(0.0, EXTRACT_SHARE))
            dataset = read_dataset(
                staging, max_pixels=settings.max_image_pixels, progress=progress.part(EXTRACT_SHARE, 1.0)
            )
        except ArchiveError as err:
            _record_invalid(sessions, dataset_id, [{"file": name, "line": None, "message": f"archive refused: {err}"}])
        except DatasetError as err:
            problems = [{"file": p.file, "line": p.line, "message": p.message} for p in err.problems]
            _record_invalid(sessions, dataset_id, problems)
        else:
            _record_ready(sessions, settings, dataset_id, staging, dataset)
    except ValidationInterrupted:
        remove_path(staging)
        upload_done(upload)
        log.info("validation of dataset %s interrupted by the API stopping; the next start resumes it", dataset_id)
        return
    except ValidationCancelled:
        log.info("dataset %s was deleted while being validated; its upload is removed", dataset_id)
    except Exception:  # a dataset must never stay `validating` because of an error nobody foresaw
        incident = uuid.uuid4().hex[:12]
        log.exception("incident %s validating dataset %s", incident, dataset_id)
        message = f"the server failed while checking the upload (incident {incident}; the server log has the details)"
        _record_invalid(sessions, dataset_id, [{"file": name, "line": None, "message": message}])
    remove_path(staging)
    remove_path(upload)


def record_lost(session: Session, dataset_id: str) -> bool:
    """Make a `validating` dataset whose zip is gone `invalid`; False when it was no longer validating."""
    problems = [{"file": ".", "line": None, "message": LOST}]
    done = session.execute(_finish(dataset_id, "invalid", problems=problems, size_bytes=0)).rowcount == 1
    session.commit()
    return done


def _finish(dataset_id: str, state: str, **values):
    # Conditional: a DELETE may have taken the row, or another process already finished it.
    return (
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.state == "validating")
        .values(state=state, progress=1.0, **values)
    )


def _record_invalid(sessions: sessionmaker[Session], dataset_id: str, problems: list[dict]) -> None:
    with sessions() as session:
        session.execute(_finish(dataset_id, "invalid", problems=problems, size_bytes=0))
        session.commit()


def _record_ready(sessions: sessionmaker[Session], settings: Settings, dataset_id: str, staging: Path, dataset) -> None:
    """Move the checked folder into place, then mark the dataset ready with its image rows, in one transaction."""
    final = settings.datasets_dir / dataset_id
    final.parent.mkdir(parents=True, exist_ok=True)
    size_bytes = _folder_bytes(staging)
    staging.rename(final)
    images = [
        {
            "dataset_id": dataset_id,
            "image_id": im.id,
            "file": str(im.image.relative_to(staging)),
            "tags": [dataset.classes[t - 1] for t in im.tags],
            "split": im.split,
            "has_mask": im.mask is not None,
        }
        for im in dataset.images
    ]
    finish = _finish(
        dataset_id,
        "ready",
        layout=dataset.layout,
        classes=list(dataset.classes),
        image_count=len(dataset.images),
        tag_counts=_tag_counts(dataset),
        gt_count=sum(im.mask is not None for im in dataset.images),
        size_bytes=size_bytes,
    )
    with sessions() as session:
        try:
            if session.execute(finish).rowcount != 1:
                raise ValidationCancelled
            session.execute(insert(Image), images)
            session.commit()
        except BaseException:
            session.rollback()
            remove_path(final)
            raise


def _remove_leftovers(settings: Settings, dataset_id: str) -> None:
    """What an earlier, interrupted validation of the same upload extracted, or moved into place before a
    crash kept it from committing (nothing reads a dataset's folder before it is ready). Not with
    `remove_path`: that would end the upload's time in progress, and a sweep could take the zip meanwhile."""
    extracted = [settings.uploads_dir / f"{dataset_id}.d", *settings.uploads_dir.glob(f".{dataset_id}.d.*")]
    for leftover in (*extracted, settings.datasets_dir / dataset_id):
        shutil.rmtree(leftover, ignore_errors=True)


class _ProgressWriter:
    """Writes a validation's progress to its row every PROGRESS_INTERVAL_S; raises ValidationCancelled once
    the row is gone, ValidationInterrupted once the API is stopping."""

    def __init__(self, sessions: sessionmaker[Session], dataset_id: str, stopping: Callable[[], bool]):
        self.sessions, self.dataset_id, self.stopping = sessions, dataset_id, stopping
        self.written_at = time.monotonic()

    def part(self, start: float, end: float) -> Callable[[int, int], None]:
        """A `progress(done, total)` callback covering start..end of the whole."""
        return lambda done, total: self.report(start + (end - start) * done / max(total, 1))

    def report(self, fraction: float) -> None:
        if self.stopping():
            raise ValidationInterrupted
        now = time.monotonic()
        if now - self.written_at < PROGRESS_INTERVAL_S:
            return
        self.written_at = now
        with self.sessions() as session:
            still_validating = update(Dataset).where(Dataset.id == self.dataset_id, Dataset.state == "validating")
            if session.execute(still_validating.values(progress=round(fraction, 4))).rowcount != 1:
                raise ValidationCancelled
            session.commit()


def _tag_counts(dataset) -> dict[str, int]:
    counts = Counter(t for im in dataset.images for t in im.tags)
    return {name: counts.get(label, 0) for label, name in enumerate(dataset.classes, start=1)}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

"""Deleting a dataset, decided in one statement so that it can never race a job being created on it."""

from __future__ import annotations

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from app.db import decide_serially, serializable
from app.errors import ApiError
from app.models import ACTIVE_STATES, Dataset, Job
from app.settings import Settings
from app.storage import dataset_dir, job_dir, remove_path


def remove_dataset(session: Session, settings: Settings, dataset: Dataset, *, cascade: bool) -> None:
    """Delete the dataset with its images and files. Without `cascade` it is refused (409) while the
    dataset has any job, so that no results are lost unasked; with it, its finished jobs go too, with
    their rows and run folders. A job still queued or running refuses it either way."""
    # Read before the transaction below starts: it expires the row.
    dataset_id, path = dataset.id, dataset.path
    job_ids = decide_serially(session, lambda _attempt: _delete_rows(session, dataset_id, cascade))
    for folder in [dataset_dir(settings, path), *(job_dir(settings, j) for j in job_ids)]:
        remove_path(folder)


def _delete_rows(session: Session, dataset_id: str, cascade: bool) -> list[str]:
    """Delete the dataset's row (its images, and with `cascade` its finished jobs, follow by the foreign
    keys' ON DELETE CASCADE); returns the ids of the jobs deleted with it.

    The check and the delete are one statement in a serializable transaction: a job created at the
    same moment either commits first (the delete then finds it and refuses with 409) or finds the
    dataset gone (POST /v1/jobs refuses with 409). On PostgreSQL one of two conflicting transactions
    may abort with a serialization failure instead, which `decide_serially` retries.
    """
    serializable(session)
    job_ids = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id)))
    blocking_job = Job.dataset_id == Dataset.id
    if cascade:
        blocking_job &= Job.state.in_(ACTIVE_STATES)
    deleted = session.execute(delete(Dataset).where(Dataset.id == dataset_id, ~exists().where(blocking_job))).rowcount
    if deleted != 1:
        session.rollback()
        raise _refusal(session, dataset_id, cascade)
    session.commit()
    return job_ids


def _refusal(session: Session, dataset_id: str, cascade: bool) -> ApiError:
    if session.scalar(select(Dataset.id).where(Dataset.id == dataset_id)) is None:  # another request deleted it
        return ApiError(404, f"no dataset {dataset_id!r}; GET /v1/datasets lists yours")
    job_count = session.scalar(select(func.count(Job.id)).where(Job.dataset_id == dataset_id))
    active = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.state.in_(ACTIVE_STATES))))
    if active:
        jobs = ", ".join(active)
        in_use = f"dataset is in use by queued or running job(s) {jobs}; cancel them or wait until they end"
        if cascade:
            return ApiError(409, in_use)
        return ApiError(409, f"{in_use}, then add ?cascade=true to delete its {job_count} job(s) and their results too")
    return ApiError(409, f"dataset has {job_count} job(s); add ?cascade=true to delete them and their results too")

"""Deleting a dataset, decided in one statement so that it can never race a job being created on it."""

from __future__ import annotations

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from app.db import serializable
from app.errors import ApiError
from app.models import ACTIVE_STATES, Dataset, Job


def delete_unused_dataset(session: Session, dataset_id: str) -> list[str]:
    """Delete the dataset (its images, finished jobs and their rows go with it, by the foreign keys'
    ON DELETE CASCADE) unless a job is queued or running on it; returns the deleted jobs' ids.

    The check and the delete are one statement in a serializable transaction: a job created at the
    same moment either commits first (the delete then finds it and refuses with 409) or finds the
    dataset gone (POST /v1/jobs refuses with 409). On PostgreSQL one of two conflicting transactions
    may abort with a serialization failure instead; run it through `decide_serially`.
    """
    serializable(session)
    job_ids = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id)))
    in_use = exists().where(Job.dataset_id == Dataset.id, Job.state.in_(ACTIVE_STATES))
    deleted = session.execute(delete(Dataset).where(Dataset.id == dataset_id, ~in_use)).rowcount
    if deleted != 1:
        session.rollback()
        active = session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.state.in_(ACTIVE_STATES)))
        raise ApiError(409, f"dataset is in use by job(s) {', '.join(active)}; cancel them or wait until they end")
    session.commit()
    return job_ids

"""What a dataset's state allows, and deleting a dataset, decided in one statement so that it can never
race a job or a prediction run being created on it.

Only a `ready` dataset has images to read: jobs and image listings refuse the others (409), naming the
state. Deleting a dataset still `validating` cancels its validation: the row goes at once, and the
validating thread removes its files when it next reports progress (app/ingest.py).

A job's trained segmenter is what its prediction runs label images with, so deleting a dataset never
removes a model quietly: without `cascade` any job refuses the delete (and the refusal counts the
prediction runs on them); with it, the finished jobs go with their prediction runs, and a prediction
run still queued or running refuses it, as a job still queued or running does.
"""

from __future__ import annotations

from sqlalchemy import Select, delete, exists, func, select
from sqlalchemy.orm import Session

from app.db import decide_serially, serializable
from app.errors import ApiError
from app.models import ACTIVE_PREDICTION_STATES, ACTIVE_STATES, Dataset, Job, PredictionRun
from app.settings import Settings
from app.storage import dataset_dir, job_dir, prediction_dir, remove_path


def require_ready(dataset: Dataset) -> None:
    """409 unless the dataset passed its validation, saying what its state means and what to do."""
    if dataset.state == "validating":
        raise ApiError(
            409,
            f"dataset {dataset.id!r} is still validating ({dataset.progress:.0%} checked); wait until "
            f"GET /v1/datasets/{dataset.id} shows state 'ready'",
        )
    if dataset.state == "invalid":
        problems = dataset.problems or []
        first = f"; the first: {problems[0]['file']}: {problems[0]['message']}" if problems else ""
        raise ApiError(
            409,
            f"dataset {dataset.id!r} is invalid, with {len(problems)} problem(s){first}; GET /v1/datasets/"
            f"{dataset.id} lists them all: fix them and upload the dataset again",
        )


def remove_dataset(session: Session, settings: Settings, dataset: Dataset, *, cascade: bool) -> None:
    """Delete the dataset with its images and files. Without `cascade` it is refused (409) while the
    dataset has any job, so that no results are lost unasked; with it, its finished jobs go too, with
    their rows, run folders and prediction runs. A job or prediction run still queued or running refuses
    it either way."""
    # Read before the transaction below starts: it expires the row.
    dataset_id, path = dataset.id, dataset.path
    job_ids, prediction_ids = decide_serially(session, lambda _attempt: _delete_rows(session, dataset_id, cascade))
    folders = [
        dataset_dir(settings, path),
        *(job_dir(settings, j) for j in job_ids),
        *(prediction_dir(settings, p) for p in prediction_ids),
    ]
    for folder in folders:
        remove_path(folder)


def _delete_rows(session: Session, dataset_id: str, cascade: bool) -> tuple[list[str], list[str]]:
    """Delete the dataset's row (its images, and with `cascade` its finished jobs and their prediction
    runs, follow by the foreign keys' ON DELETE CASCADE); returns the ids of the jobs and prediction runs
    deleted with it.

    The check and the delete are one statement in a serializable transaction: a job or prediction run
    created at the same moment either commits first (the delete then finds it and refuses with 409) or
    finds the dataset or job gone (its POST refuses with 409). On PostgreSQL one of two conflicting
    transactions may abort with a serialization failure instead, which `decide_serially` retries.
    """
    serializable(session)
    job_ids = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id)))
    prediction_ids = list(session.scalars(_predictions_of(dataset_id, select(PredictionRun.id))))
    blocking_job = Job.dataset_id == Dataset.id
    if cascade:
        blocking_job &= Job.state.in_(ACTIVE_STATES)
    active_prediction = (
        (Job.dataset_id == Dataset.id)
        & (PredictionRun.job_id == Job.id)
        & PredictionRun.state.in_(ACTIVE_PREDICTION_STATES)
    )
    deleted = session.execute(
        delete(Dataset).where(
            Dataset.id == dataset_id, ~exists().where(blocking_job), ~exists().where(active_prediction)
        )
    ).rowcount
    if deleted != 1:
        session.rollback()
        raise _refusal(session, dataset_id, cascade)
    session.commit()
    return job_ids, prediction_ids


def _predictions_of(dataset_id: str, query: Select) -> Select:
    """`query` narrowed to the prediction runs of the dataset's jobs."""
    return query.join(Job, PredictionRun.job_id == Job.id).where(Job.dataset_id == dataset_id)


def _refusal(session: Session, dataset_id: str, cascade: bool) -> ApiError:
    if session.scalar(select(Dataset.id).where(Dataset.id == dataset_id)) is None:  # another request deleted it
        return ApiError(404, f"no dataset {dataset_id!r}; GET /v1/datasets lists yours")
    job_count = session.scalar(select(func.count(Job.id)).where(Job.dataset_id == dataset_id))
    active = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.state.in_(ACTIVE_STATES))))
    prediction_count = session.scalar(_predictions_of(dataset_id, select(func.count(PredictionRun.id))))
    labelling = list(
        session.scalars(
            _predictions_of(dataset_id, select(PredictionRun.id)).where(
                PredictionRun.state.in_(ACTIVE_PREDICTION_STATES)
            )
        )
    )
    in_use = []
    if active:
        in_use.append(f"queued or running job(s) {', '.join(active)}; cancel them or wait until they end")
    if labelling:
        in_use.append(
            f"prediction run(s) {', '.join(labelling)} still labelling images with its jobs' segmenters; "
            "wait until they end"
        )
    results = "and their results"
    if prediction_count:
        results += f", with the {prediction_count} prediction run(s) made with their segmenters,"
    if in_use:
        refusal = f"dataset is in use by {'; and by '.join(in_use)}"
        if cascade:
            return ApiError(409, refusal)
        return ApiError(409, f"{refusal}, then add ?cascade=true to delete its {job_count} job(s) {results} too")
    return ApiError(409, f"dataset has {job_count} job(s); add ?cascade=true to delete them {results} too")

"""Derived jobs: POST /v1/jobs with `parent_job_id` re-runs a job of yours from train_pole with its words
overridden, reusing the parent's train_cam and select_prompts outputs (ml/spec/derived_runs.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.models import Job
from app.override_service import checked_override, list_overrides, override_record, store_override
from app.schemas import JobCreate
from app.settings import Settings
from app.storage import run_layout
from ml.spec.config import PipelineConfig
from ml.spec.derived_runs import REUSED_STAGES, derived_config


def derivation_parent(session: Session, settings: Settings, owner_id: int, body: JobCreate) -> Job:
    """The job `body` derives from: the caller's, of the same dataset, with its reused stages' outputs on disk."""
    parent = session.scalar(select(Job).where(Job.id == body.parent_job_id, Job.owner_id == owner_id))
    if parent is None:
        raise ApiError(404, f"no job {body.parent_job_id!r} to derive from; GET /v1/jobs lists yours")
    if body.dataset_id is not None and body.dataset_id != parent.dataset_id:
        raise ApiError(
            422,
            f"dataset_id {body.dataset_id!r} is not the dataset of job {parent.id!r} ({parent.dataset_id!r}); "
            "a derived job labels its parent's dataset: leave dataset_id out",
        )
    layout = run_layout(settings, parent.id)
    missing = [stage for stage in REUSED_STAGES if not layout.stage_done(stage)]
    if missing:
        raise ApiError(
            409,
            f"job {parent.id!r} is {parent.state} and has not finished {' and '.join(missing)}; a derived job "
            f"reuses its {' and '.join(REUSED_STAGES)} outputs: derive from it once they are done",
        )
    return parent


def derived_job_config(session: Session, parent: Job, body: JobCreate) -> PipelineConfig:
    """Store `body.overrides` on the parent (checked as POST /v1/jobs/{id}/overrides checks them; not
    committed) and return the derived job's config, which records every override of the parent.
    Raises ConfigError for a config that changes what the reused stages read."""
    if body.synonyms:
        raise ApiError(
            422,
            "synonyms choose select_prompts' candidates, which a derived job reuses from its parent; "
            f"leave them out and override the words instead (POST /v1/jobs/{parent.id}/overrides)",
        )
    for item in body.overrides or []:
        store_override(session, checked_override(session, parent, item))
    overrides = [override_record(o) for o in list_overrides(session, parent)]
    return derived_config(parent.config, body.preset, body.config, parent.id, overrides)

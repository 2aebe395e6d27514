"""Fixtures for the worker tests: a migrated database with one owner and dataset, and job rows."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.db import create_db_engine, make_sessionmaker, session_scope, upgrade
from app.models import ApiKey, Dataset, Job, JobState, utcnow
from app.queue import create_celery
from tests.app.service import make_settings


@pytest.fixture
def settings(tmp_path):
    settings = make_settings(tmp_path / "data")
    settings.make_dirs()
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def sessions(settings):
    engine = create_db_engine(settings.database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def celery(settings):
    return create_celery(settings)


@pytest.fixture
def make_job(sessions):
    """Insert a job row; `stale_by` seconds puts its heartbeat that far in the past."""
    with session_scope(sessions) as session:
        owner = ApiKey(name="owner", prefix="pole_x", key_hash="0" * 64)
        dataset = Dataset(
            name="d.zip", path="datasets/d", layout="manifest", classes=["a"], image_count=1,
            tag_counts={"a": 1}, gt_count=0, size_bytes=1,
        )  # fmt: skip
        session.add(owner)
        session.flush()
        dataset.owner_id = owner.id
        session.add(dataset)
        session.flush()
        owner_id, dataset_id = owner.id, dataset.id

    def make(state=JobState.queued, stale_by: float | None = None, **fields) -> str:
        heartbeat = utcnow() - timedelta(seconds=stale_by) if stale_by is not None else None
        with session_scope(sessions) as session:
            job = Job(
                owner_id=owner_id, dataset_id=dataset_id, state=state, preset="cpu-small", config={}, seed=0,
                models={}, heartbeat_at=heartbeat, **fields,
            )  # fmt: skip
            session.add(job)
            session.flush()
            return job.id

    return make


def job_row(sessions, job_id: str) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def queued_messages(settings) -> list[str]:
    """The messages waiting in the embedded file queue."""
    folder = settings.broker_dir / "queue"
    return [p.read_text() for p in sorted(folder.iterdir())]

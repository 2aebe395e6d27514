"""Fixtures for the service tests: settings in tmp_path, the API over real HTTP, two API keys."""

from __future__ import annotations

import pytest

from app.db import create_db_engine, make_sessionmaker, session_scope
from app.security import create_key
from tests.app.service import (
    ApiServer,
    create_postgres_database,
    drop_postgres_database,
    make_dataset_zip,
    make_settings,
    small_dataset,
)

MiB = 1 << 20


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data", max_upload_bytes=2 * MiB, max_archive_members=200)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """Settings on each database the service runs on: SQLite, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield make_settings(tmp_path / "data")
        return
    url = create_postgres_database()
    yield make_settings(tmp_path / "data", database_url=url)
    drop_postgres_database(url)


@pytest.fixture
def api(settings):
    with ApiServer(settings) as server:
        yield server


def new_key(settings, name: str) -> str:
    engine = create_db_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, secret = create_key(session, name=name)
    engine.dispose()
    return secret


@pytest.fixture
def alice(api, settings):
    with api.client(new_key(settings, "alice")) as client:
        yield client


@pytest.fixture
def bob(api, settings):
    with api.client(new_key(settings, "bob")) as client:
        yield client


@pytest.fixture
def dataset_zip(tmp_path):
    """A valid 6-image manifest dataset with masks, zipped."""
    return make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")

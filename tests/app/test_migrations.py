"""The schema comes from the migrations alone, on SQLite and on PostgreSQL, and matches the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.db import alembic_config, create_db_engine, current_revision, upgrade
from app.models import Base
from tests.app.service import create_postgres_database, drop_postgres_database


def check_upgrade_from_empty(url: str) -> None:
    engine = create_db_engine(url)
    assert inspect(engine).get_table_names() == []
    upgrade(url)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert current_revision(engine) == head
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    with engine.connect() as conn:
        # The models and the migrated schema agree: no difference left for autogenerate to find.
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    upgrade(url)  # a second upgrade is a no-op
    command.downgrade(alembic_config(url), "base")
    assert inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()


def test_sqlite_upgrades_from_empty_to_head(tmp_path):
    check_upgrade_from_empty(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.fixture
def postgres_url():
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def test_postgresql_upgrades_from_empty_to_head(postgres_url):
    check_upgrade_from_empty(postgres_url)

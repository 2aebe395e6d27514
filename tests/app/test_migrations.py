"""The schema comes from the migrations alone, on SQLite and on PostgreSQL, and matches the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

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


def check_upgrade_from_0001_keeps_the_data(url: str) -> None:
    """A database made by the first release (keys, no workers table) gains the workers table and keeps its rows."""
    engine = create_db_engine(url)
    upgrade(url, "0001")
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO api_keys (name, prefix, key_hash, created_at) VALUES ('old', 'pole_old', :h, :t)"),
            {"h": "a" * 64, "t": "2026-11-25 00:00:00"},
        )
    assert "workers" not in inspect(engine).get_table_names()
    upgrade(url)
    assert "workers" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM api_keys")).scalars().all() == ["old"]
    command.downgrade(alembic_config(url), "0001")
    assert "workers" not in inspect(engine).get_table_names() and current_revision(engine) == "0001"
    engine.dispose()


def test_sqlite_upgrades_from_empty_to_head(tmp_path):
    check_upgrade_from_empty(f"sqlite:///{tmp_path / 'fresh.db'}")


def test_sqlite_upgrades_from_the_first_release(tmp_path):
    check_upgrade_from_0001_keeps_the_data(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.fixture
def postgres_url():
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def test_postgresql_upgrades_from_empty_to_head(postgres_url):
    check_upgrade_from_empty(postgres_url)


def test_postgresql_upgrades_from_the_first_release(postgres_url):
    check_upgrade_from_0001_keeps_the_data(postgres_url)

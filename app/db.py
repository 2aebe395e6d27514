"""Engines, sessions and migrations. The schema is only ever created by Alembic (`upgrade`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
SERIALIZATION_FAILURE = "40001"  # PostgreSQL's SQLSTATE

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def create_db_engine(url: str, **options) -> Engine:
    if url.startswith("sqlite"):
        # The API's threads and the worker's processes share the file: WAL lets readers go on while
        # one writer writes, and busy_timeout waits for the write lock instead of failing at once.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **options)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises."""
    with sessions() as session, session.begin():
        yield session


def serializable(session: Session) -> None:
    """Run the session's next transaction at SERIALIZABLE isolation (ends the current one first).

    For decisions two requests could take at once (a job created on a dataset being deleted):
    PostgreSQL then aborts one of them with a serialization failure (see `decide_serially`) instead
    of letting both commit; SQLite's single writer serialises them anyway.
    """
    session.rollback()
    session.connection(execution_options={"isolation_level": "SERIALIZABLE"})


def decide_serially(session: Session, decide: Callable[[int], T], attempts: int = 8) -> T:
    """Run `decide(attempt)` (whose transaction starts with `serializable(session)`) again while
    PostgreSQL aborts it for a concurrent transaction it conflicted with: the retry sees what that
    one committed.

    Under a burst of conflicting requests three attempts were measured to run out about once in
    eight runs of the race test; a short random pause lets the conflicting transactions finish
    instead of colliding again in lockstep.
    """
    for attempt in range(attempts):
        try:
            return decide(attempt)
        except OperationalError as err:
            if getattr(err.orig, "sqlstate", None) != SERIALIZATION_FAILURE or attempt == attempts - 1:
                raise
            session.rollback()
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
    raise AssertionError("attempts must be at least 1")


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def alembic_config(url: str):
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False  # the calling program owns logging
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (creating the schema on an empty database)."""
    from alembic import command

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()

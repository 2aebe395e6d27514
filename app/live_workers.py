"""Which workers are alive, as the `workers` table tells it.

Each worker's main process writes its row every `heartbeat_seconds` (worker.presence) and deletes it
when it stops cleanly; `pole serve` deletes its own worker's row the moment it sees that worker exit.
A worker killed any other way leaves a row whose heartbeat goes stale: after `stale_after_seconds`
it no longer counts. /readyz reports the count; job creation reads the weights the live ones hold.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.models import Worker, utcnow


def record_worker_heartbeat(
    sessions: sessionmaker[Session],
    *,
    name: str,
    hostname: str,
    pid: int,
    queue: str,
    started_at: datetime,
    held_weights: dict[str, Any] | None,
) -> None:
    """Create or refresh the row of worker `name` (a restarted worker takes over its previous life's row).

    `held_weights`: the weight tags it can load (ml.spec.weight_tags), None while it does not know yet."""
    values = {
        "hostname": hostname,
        "pid": pid,
        "queue": queue,
        "started_at": started_at,
        "heartbeat_at": utcnow(),
        "held_weights": held_weights,
    }
    with session_scope(sessions) as session:
        if not session.execute(update(Worker).where(Worker.name == name).values(**values)).rowcount:
            session.add(Worker(name=name, **values))


def forget_worker(sessions: sessionmaker[Session], *, name: str, pid: int) -> None:
    """Delete the row of worker `name` if process `pid` wrote it (never a successor's under the same name)."""
    with session_scope(sessions) as session:
        session.execute(delete(Worker).where(Worker.name == name, Worker.pid == pid))


def count_live_workers(session: Session, queue: str, stale_after_seconds: float) -> int:
    """Workers consuming `queue` whose heartbeat is younger than `stale_after_seconds`."""
    return session.scalar(select(func.count()).select_from(Worker).where(_is_live(queue, stale_after_seconds))) or 0


def live_workers_held_weights(session: Session, queue: str, stale_after_seconds: float) -> list[dict[str, Any] | None]:
    """What each live worker of `queue` advertises it holds (None: that worker does not know yet)."""
    return list(session.scalars(select(Worker.held_weights).where(_is_live(queue, stale_after_seconds))))


def _is_live(queue: str, stale_after_seconds: float):
    return (Worker.queue == queue) & (Worker.heartbeat_at >= utcnow() - timedelta(seconds=stale_after_seconds))

"""`pole serve`, `pole worker`, `pole db upgrade` and `pole keys ...`: running and administering the service.

Settings come from POLE_* environment variables (app/settings.py). Heavy imports stay inside the
handlers so `pole --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the API and one worker on this machine (embedded defaults: no servers needed)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--no-worker", action="store_true", help="API only; workers run elsewhere (`pole worker`)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="a worker that runs queued jobs (start several to scale out)")
    p.add_argument(
        "--name",
        default=f"pole@{socket.gethostname()}",
        help="unique per worker, stable across restarts (default pole@HOST; give each worker on one machine its own)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (default 1: one job per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument(
        "--parent-pid", type=int, help="die with this process, the worker's parent (how `pole serve` runs its worker)"
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("db", help="database schema")
    db = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db.add_parser("upgrade", help="apply the migrations (creates the schema on an empty database)").set_defaults(
        func=cmd_db_upgrade
    )

    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    k = keys.add_parser("create", help="create a key and print it (shown this once; only a hash is stored)")
    k.add_argument("--name", required=True, help="who or what the key is for")
    k.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys (id, prefix, name, state)").set_defaults(func=cmd_keys_list)
    k = keys.add_parser("revoke", help="revoke a key; its requests get 401 from then on")
    k.add_argument("key", help="the key's id or prefix, as `pole keys list` shows them")
    k.set_defaults(func=cmd_keys_revoke)


def _settings():
    from pydantic import ValidationError

    from app.settings import Settings

    try:
        return Settings()
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise SystemExit(f"error: bad POLE_* setting: {problems}") from None


def _sessions(settings):
    from app.db import create_db_engine, current_revision, make_sessionmaker

    engine = create_db_engine(settings.database_url)
    with _database_reachable(settings, advice="if it was never set up, run `pole db upgrade` first"):
        revision = current_revision(engine)
    if revision is None:
        raise SystemExit("error: the database has no schema yet; run `pole db upgrade` first")
    return make_sessionmaker(engine)


@contextmanager
def _database_reachable(settings, advice: str = "") -> Iterator[None]:
    """Report a database that cannot be reached in one line naming the setting, the URL with its
    password masked, and the cause (exit status 2), instead of the driver's long traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as err:
        if err.statement is not None:  # SQLAlchemy gives a failure to connect no statement: this came later
            raise
        # The driver's first line ends with the cause, after where it tried ('... port 1 failed: Connection refused').
        cause = str(err.orig).splitlines()[0].rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
        password = make_url(settings.database_url).password
        if password:
            cause = cause.replace(password, "***")
        message = f"error: cannot connect to the database POLE_DATABASE_URL={_safe_url(settings.database_url)}: {cause}"
        print(f"{message}; {advice}" if advice else message, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from app.db import create_db_engine, current_revision, upgrade

    settings = _settings()
    with _database_reachable(settings):
        upgrade(settings.database_url)
        revision = current_revision(create_db_engine(settings.database_url))
    print(f"database {_safe_url(settings.database_url)} at revision {revision}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.security import create_key

    with session_scope(_sessions(_settings())) as session:
        row, secret = create_key(session, name=args.name)
        print(f"created key {row.id} ({row.prefix}...) for {row.name!r}; it is shown only now:", file=sys.stderr)
    print(secret)
    return 0


def cmd_keys_list(_args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from app.models import ApiKey

    with _sessions(_settings())() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
    print(f"{'id':>4}  {'prefix':<12}  {'created (UTC)':<19}  {'state':<20}  name")
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        print(f"{row.id:>4}  {row.prefix:<12}  {row.created_at:%Y-%m-%d %H:%M:%S}  {state:<20}  {row.name}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.security import revoke_key

    try:
        with session_scope(_sessions(_settings())) as session:
            key = revoke_key(session, key_ref=args.key)
            print(f"key {key.id} ({key.prefix}..., {key.name!r}) is revoked")
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.embedded_lock import EmbeddedWorkerRunning, hold_embedded_worker_lock
    from worker.lifeline import die_with_parent

    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    settings = _settings()
    settings.make_dirs()
    if settings.embedded_broker:  # before the heavy imports below, so a refusal is quick
        try:
            hold_embedded_worker_lock(settings.data_dir)
        except EmbeddedWorkerRunning as err:
            raise SystemExit(f"error: {err}") from None

    import worker.tasks  # noqa: F401  (registers the task with every Celery app)
    from app.queue import create_celery
    from worker.presence import PresenceStep
    from worker.reaper import ReaperStep

    celery = create_celery(settings)
    celery.steps["worker"].add(ReaperStep)
    celery.steps["worker"].add(PresenceStep)
    # No mingle/gossip/heartbeat: workers coordinate through the database, and the file broker has no fanout.
    celery.worker_main(
        ["worker", "--hostname", args.name, "--concurrency", str(args.concurrency), "--loglevel", args.loglevel,
         "--queues", settings.queue, "--without-mingle", "--without-gossip", "--without-heartbeat"]
    )  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.db import upgrade
    from app.main import create_app
    from pole.worker_supervisor import WorkerSupervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    settings.make_dirs()
    with _database_reachable(settings):
        upgrade(settings.database_url)
    logging.getLogger("pole").info(
        "data in %s, database %s, queue %s", settings.data_dir, _safe_url(settings.database_url), settings.broker_url
    )
    # uvicorn re-raises the Ctrl-C/SIGTERM it caught once it has shut down; this turns that into a
    # normal exit, so the worker below is always stopped too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level="info"))
    supervisor = None
    if not args.no_worker:
        name = f"pole-serve@{socket.gethostname()}"
        supervisor = WorkerSupervisor(settings, name, on_give_up=lambda: setattr(server, "should_exit", True))
        supervisor.start()
    try:
        server.run()
    finally:
        if supervisor is not None:
            supervisor.stop()
    if supervisor is not None and supervisor.failure:
        raise SystemExit(f"error: {supervisor.failure}")
    if not server.started:
        raise SystemExit("error: the API did not start (see above)")
    return 0


def _exit_quietly(signum, _frame) -> None:
    raise SystemExit(0)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

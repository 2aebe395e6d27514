"""The service commands as a user runs them: `pole db upgrade`, `pole keys ...`, `pole serve`."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from alembic.script import ScriptDirectory

from app.db import alembic_config
from tests.app.service import free_port, make_settings, processes_using, settings_env


def pole(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pole.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_service_commands():
    result = subprocess.run([sys.executable, "-m", "pole.cli", "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "worker", "db", "keys", "run"):
        assert f"    {command} " in result.stdout


def test_keys_are_shown_once_stored_hashed_and_revocable(tmp_path, api, settings):
    created = pole(settings, "keys", "create", "--name", "ci robot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pole_") and "shown only now" in created.stderr
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob("pole.db*"))
    assert key.encode() not in stored and hashlib.sha256(key.encode()).hexdigest().encode() in stored

    with api.client(key) as client:
        assert client.get("/v1/datasets").status_code == 200
        listed = pole(settings, "keys", "list").stdout
        assert "ci robot" in listed and key[:11] in listed and "active" in listed
        revoked = pole(settings, "keys", "revoke", key[:11])
        assert revoked.returncode == 0 and "revoked" in revoked.stdout
        assert client.get("/v1/datasets").status_code == 401
    assert "revoked" in pole(settings, "keys", "list").stdout
    unknown = pole(settings, "keys", "revoke", "pole_nothing")
    assert unknown.returncode == 2 and "no single key matches" in unknown.stderr


def test_keys_need_the_schema_first(tmp_path):
    settings = make_settings(tmp_path / "fresh")
    refused = pole(settings, "keys", "create", "--name", "x")
    assert refused.returncode != 0 and "run `pole db upgrade` first" in refused.stderr
    upgraded = pole(settings, "db", "upgrade")
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    assert upgraded.returncode == 0 and f"at revision {head}" in upgraded.stdout
    assert pole(settings, "keys", "create", "--name", "x").returncode == 0


def test_an_unreachable_database_is_named_in_one_line_without_its_password(tmp_path):
    port = free_port()  # nothing listens on it once the probe socket is closed
    password = "s3cret-pw"
    settings = make_settings(tmp_path / "data", database_url=f"postgresql://pole:{password}@127.0.0.1:{port}/pole")
    line = (
        f"error: cannot connect to the database POLE_DATABASE_URL=postgresql+psycopg://pole:***@127.0.0.1:{port}/pole: "
        "Connection refused"
    )
    for_keys = f"{line}; if it was never set up, run `pole db upgrade` first"
    for command, expected in (
        (["db", "upgrade"], line),
        (["keys", "list"], for_keys),
        (["keys", "create", "--name", "x"], for_keys),
        (["keys", "revoke", "pole_x"], for_keys),
    ):
        result = pole(settings, *command)
        assert (result.returncode, result.stderr.splitlines()) == (2, [expected]), command
        assert password not in result.stdout, command
    # serve logs its start (the migrations it applies) before the error, which ends it all the same.
    served = pole(settings, "serve", "--no-worker", "--port", str(free_port()))
    assert served.returncode == 2 and served.stderr.splitlines()[-1] == line
    assert "Traceback" not in served.stderr and password not in served.stdout + served.stderr


def test_serve_runs_api_and_worker_and_stops_both_on_ctrl_c(tmp_path):
    settings = make_settings(tmp_path / "data")
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "pole.cli", "serve", "--port", str(port)],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, serve.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        assert (settings.data_dir / "pole.db").is_file()  # migrated at start
        while len(processes_using(settings.data_dir)) < 3:  # serve, the worker and its pool child
            assert time.monotonic() < deadline, "the embedded worker did not start"
            time.sleep(0.2)
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
    deadline = time.monotonic() + 30
    while processes_using(settings.data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(settings.data_dir) == []
